"""Every merge method by name: one name, one algorithm, one class implementing its rule.

Where a method runs is a property of its entry, not a second class: ``"encoder"`` (inside a
transformer's blocks, planning ``r`` tokens to remove per layer), ``"boundary"`` (once, on the visual
tokens a vision-language model hands its LLM, planning the ``keep`` tokens the LLM receives) or
``"llm"`` (inside the language model) or ``"clip"`` (once, on every frame's tokens of a clip: the temporal
methods of :mod:`tomviz.merge.temporal.methods`; ``tome`` and ``random`` run there over all frames). An encoder method that also runs at the boundary is the same
class there: :func:`tomviz.merge.visual.get_visual_method` runs its rule on the visual tokens.

No torch here: the command line lists the names (``--help``) before anything heavy loads; the classes
are imported on first use.
"""
from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

from tomviz.merge.checks import METHOD_PLACES, REMOVED_IN, check_place


@dataclass(frozen=True)
class MethodEntry:
    """One registered method."""

    name: str
    target: str | type  # "module:Class" (imported on first use) or the class itself
    places: tuple[str, ...] = ("encoder",)  # where it runs (see the module docstring)
    defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # place → options that differ there

    def load(self) -> type:
        """The class implementing the method's rule."""
        if not isinstance(self.target, str):
            return self.target
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)


_M = "tomviz.merge."
_T = "tomviz.merge.temporal.methods:"
ENTRIES: dict[str, MethodEntry] = {entry.name: entry for entry in (
    MethodEntry("tome", _M + "tome:ToMe", ("encoder", "boundary", "clip")),
    MethodEntry("pitome", _M + "pitome:PiToMe"),
    MethodEntry("pitome_text", _M + "pitome:PiToMeText"),
    MethodEntry("diffrate", _M + "diffrate:DiffRate"),
    # the boundary has no calibrated per-layer thresholds (they are dinov2-small's keys): one threshold there
    MethodEntry("dtome", _M + "dtome:DToMe", ("encoder", "boundary"), {"boundary": {"threshold": 0.9}}),
    MethodEntry("hiprune", _M + "hiprune:HiPrune", ("encoder", "boundary")),
    MethodEntry("evit", _M + "evit:EViT"),
    MethodEntry("random", _M + "random_:RandomBipartite", ("encoder", "clip")),  # random merging (ToMe on a random A/B split)
    MethodEntry("subword", _M + "subword:Subword"),
    MethodEntry("random_prune", _M + "random_:RandomPrune", ("boundary",)),  # random pruning (a seeded subset stays)
    MethodEntry("downsample", _M + "visual:Downsample", ("boundary",)),
    MethodEntry("fastv", _M + "visual:FastV", ("llm",)),
    MethodEntry("visionzip", _M + "visual:VisionZip", ("boundary",)),  # the authors' rule, before the projector
    MethodEntry("aim", _M + "visual:AIM", ("boundary", "llm")),  # merging before the LLM; PageRank pruning inside it
    MethodEntry("visionzip_paper", _M + "visual:VisionZipPaper", ("boundary",)),  # the paper's description, any tokens
    MethodEntry("mustdrop", _M + "mustdrop:MustDrop", ("llm",)),  # window merging, key set, filtering, cache eviction
    # temporal methods, on a clip's per-frame tokens (tomviz.merge.temporal)
    MethodEntry("holitom", _T + "HoliTom", ("clip",)),
    MethodEntry("fastvid", _T + "FastVID", ("clip",)),
    MethodEntry("dycoke", _T + "DyCoke", ("clip",)),
    MethodEntry("framefusion", _T + "FrameFusion", ("clip",)),
    MethodEntry("rlt", _T + "RLT", ("clip",)),
    MethodEntry("frame_drop", _T + "FrameDrop", ("clip",)),
    MethodEntry("tempme", _T + "TempMe", ("clip",)),  # inside the per-frame encoder: frames joined into clips
)}
# (place, old name) → new name: names that meant another algorithm at that place, kept working with a warning
RENAMED: dict[tuple[str, str], str] = {("boundary", "random"): "random_prune"}

_CLASSES: dict[tuple[str, ...], dict[str, type]] = {}  # live name → class maps, one per set of places


def names(*places: str) -> tuple[str, ...]:
    """The names of the methods that run at any of ``places`` (every method without), in registry order."""
    return tuple(name for name, entry in ENTRIES.items() if not places or set(places) & set(entry.places))


def classes(*places: str) -> dict[str, type]:
    """``{name: class}`` of the methods that run at any of ``places``: one dict per ``places``, kept up
    to date by :func:`register` (``tomviz.merge.METHODS`` is ``classes("encoder")``)."""
    if places not in _CLASSES:
        _CLASSES[places] = {name: ENTRIES[name].load() for name in names(*places)}
    return _CLASSES[places]


def entry(name: str, place: str = "encoder") -> MethodEntry:
    """The entry of ``name`` at ``place``; an old name with a DeprecationWarning; ValueError otherwise."""
    check_place(place, METHOD_PLACES)
    if (place, name) in RENAMED:
        new = RENAMED[(place, name)]
        warnings.warn(f"the method {name!r} {where(place)} is renamed {new!r} ({name!r} is another algorithm "
                      f"{where(ENTRIES[name].places[0])}); {name!r} {where(place)} will be removed in {REMOVED_IN}",
                      DeprecationWarning, stacklevel=3)
        name = new
    found = ENTRIES.get(name)
    if found is not None and place in found.places:
        return found
    choices = ", ".join(sorted(names(place)))
    if found is not None:
        raise ValueError(f"{name} works {' or '.join(where(p) for p in found.places)}, not {where(place)}: "
                         f"there choose one of {choices}")
    if place == "encoder":
        raise ValueError(f"unknown merge method {name!r}: choose one of {choices}")
    raise ValueError(f"unknown method {name!r} {where(place)}: choose one of {choices}")


def where(place: str) -> str:
    """``"in the encoder"``, ``"at the boundary"``, ``"inside the LLM"``."""
    return {"encoder": "in the encoder", "boundary": "at the boundary", "llm": "inside the LLM",
            "clip": "on a clip's frames"}[place]


def register(cls: type, places: tuple[str, ...] = ("encoder",), defaults: Mapping[str, Mapping[str, Any]] | None = None) -> type:
    """Add ``cls`` under ``cls.name`` at ``places`` (a known class: those places added to its own); ValueError
    when that name already names another class. Returns ``cls``."""
    for place in places:
        check_place(place, METHOD_PLACES)
    known = ENTRIES.get(cls.name)
    if known is not None and known.load() is not cls:
        raise ValueError(f"the method name {cls.name!r} is registered already ({known.target}); choose another name")
    if known is not None:
        places = tuple(dict.fromkeys(known.places + tuple(places)))
        defaults = {**known.defaults, **(defaults or {})}
    ENTRIES[cls.name] = MethodEntry(cls.name, known.target if known else cls, tuple(places), dict(defaults or {}))
    for key, table in _CLASSES.items():
        if set(key) & set(places) or not key:
            table[cls.name] = cls
    return cls
