"""Token-merging algorithms as pure tensor math (no model knowledge)."""
from __future__ import annotations

from tomviz.merge.base import MergeInputs, MergeMethod
from tomviz.merge.plan import PRUNED, MergeEdges, MergePlan
from tomviz.merge.diffrate import DiffRate
from tomviz.merge.dtome import DToMe
from tomviz.merge.evit import EViT
from tomviz.merge.hiprune import HiPrune
from tomviz.merge.pitome import PiToMe, PiToMeText
from tomviz.merge.random_ import RandomBipartite
from tomviz.merge.subword import Subword
from tomviz.merge.tome import ToMe

METHODS: dict[str, type[MergeMethod]] = {
    cls.name: cls for cls in (ToMe, PiToMe, PiToMeText, DiffRate, DToMe, HiPrune, EViT, RandomBipartite, Subword)
}


def register_method(cls: type[MergeMethod]) -> type[MergeMethod]:
    METHODS[cls.name] = cls
    return cls


def get_method(name: str | MergeMethod, **options) -> MergeMethod:
    """A merge method by name (``tomviz.merge.METHODS``), with its method-specific options."""
    if isinstance(name, MergeMethod):
        return name
    check_methods([name])
    return METHODS[name](**options)


def check_methods(names: list[str]) -> None:
    """ValueError naming every entry of ``names`` that is not in ``METHODS``."""
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise ValueError(f"unknown merge method {', '.join(map(repr, unknown))}: choose one of {', '.join(sorted(METHODS))}")


__all__ = ["METHODS", "PRUNED", "MergeEdges", "MergeInputs", "MergeMethod", "MergePlan", "check_methods", "get_method", "register_method"]
