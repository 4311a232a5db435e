"""Token-merging algorithms as pure tensor math (no model knowledge).

The names below load on first use (PEP 562), so that the torch-free modules of this package
(:mod:`tomviz.merge.checks`, :mod:`tomviz.merge.registry`) import without torch (the command line's
``--help``).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tomviz.merge import registry

if TYPE_CHECKING:  # the same names, for type checkers and readers
    from tomviz.merge.base import MergeInputs, MergeMethod
    from tomviz.merge.plan import PRUNED, MergeEdges, MergePlan

_EXPORTS = {  # name → the module that defines it
    "MergeInputs": "tomviz.merge.base", "MergeMethod": "tomviz.merge.base",
    "PRUNED": "tomviz.merge.plan", "MergeEdges": "tomviz.merge.plan", "MergePlan": "tomviz.merge.plan",
    "DiffRate": "tomviz.merge.diffrate", "DToMe": "tomviz.merge.dtome", "EViT": "tomviz.merge.evit",
    "HiPrune": "tomviz.merge.hiprune", "PiToMe": "tomviz.merge.pitome", "PiToMeText": "tomviz.merge.pitome",
    "RandomBipartite": "tomviz.merge.random_", "Subword": "tomviz.merge.subword", "ToMe": "tomviz.merge.tome",
}


def __getattr__(name: str) -> Any:
    if name == "METHODS":  # name → class of the methods that run in an encoder (tomviz.merge.registry)
        value: Any = registry.classes("encoder")
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def register_method(cls: type, places: tuple[str, ...] = ("encoder",)) -> type:
    """Register a merge method class under ``cls.name`` (see :func:`tomviz.merge.registry.register`)."""
    return registry.register(cls, places)


def get_method(name: Any, **options) -> Any:
    """A merge method by name (``tomviz.merge.METHODS``), with its method-specific options."""
    from tomviz.merge.base import MergeMethod

    if isinstance(name, MergeMethod):
        return name
    return registry.entry(name, "encoder").load()(**options)


def check_methods(names: list[str]) -> None:
    """ValueError naming every entry of ``names`` that is not a method that runs in an encoder."""
    unknown = [name for name in names if name not in registry.names("encoder")]
    if unknown:
        choices = ", ".join(sorted(registry.names("encoder")))
        raise ValueError(f"unknown merge method {', '.join(map(repr, unknown))}: choose one of {choices}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | {"METHODS"})


__all__ = ["METHODS", "PRUNED", "MergeEdges", "MergeInputs", "MergeMethod", "MergePlan", "check_methods", "get_method", "register_method"]
