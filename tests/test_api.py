"""The public API is exactly what __all__ lists."""

from __future__ import annotations

import inspect

import corral
import corral.errors


def test_all_is_explicit_sorted_and_importable():
    assert corral.__all__ == sorted(corral.__all__)
    for name in corral.__all__:
        assert hasattr(corral, name), name


def test_no_unlisted_public_names():
    public = {
        n for n, v in vars(corral).items()
        if not n.startswith("_") and not inspect.ismodule(v) and n != "annotations"
    }
    assert public <= set(corral.__all__), public - set(corral.__all__)


def test_errors_tree_is_documented_and_rooted():
    doc = corral.errors.__doc__ or ""
    for name in corral.errors.__all__:
        cls = getattr(corral.errors, name)
        assert issubclass(cls, corral.errors.CorralError)
        assert name in doc, f"{name} missing from the errors module docstring"


def test_one_abstract_method_per_extension_point():
    assert corral.Model.__abstractmethods__ == frozenset({"complete"})
    assert corral.Step.__abstractmethods__ == frozenset({"output_schema"})
    assert corral.Strategy.__abstractmethods__ == frozenset({"solve"})


def test_builtins_register_through_entry_points():
    from importlib.metadata import entry_points

    models = {ep.name for ep in entry_points(group="corral.models")}
    tasks = {ep.name for ep in entry_points(group="corral.tasks")}
    assert {"fake", "local"} <= models
    assert {"classify", "extract"} <= tasks
    strategies = {ep.name for ep in entry_points(group="corral.strategies")}
    assert strategies == {"single", "vote", "refine", "best_of", "cascade"}


def test_formats_register_through_entry_points():
    from importlib.metadata import entry_points

    from corral.io.base import FORMATS

    for group in ("corral.sources", "corral.sinks"):
        assert {ep.name for ep in entry_points(group=group)} == set(FORMATS), group


def test_importing_corral_loads_no_plugin():
    import subprocess
    import sys

    code = ("import sys, corral, corral._registry as r; "
            "assert r._loaded.cache_info().currsize == 0; "
            "assert 'corral.tasks.map' not in sys.modules and 'corral.strategies.vote' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_step_is_the_task_extension_point():
    assert corral.Step is corral.Task
