"""Models: the Model extension point and the built-in models (fake, local)."""
