"""Models: the Model extension point (:mod:`corral.models.base`) and the built-in models
(``fake``, ``local``, ``openai``, ``anthropic``), each with its typed ``Options``."""
