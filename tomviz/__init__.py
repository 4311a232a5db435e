"""tomviz: inspect token merging inside transformers, layer by layer.

The names below load on first use (PEP 562), so that ``import tomviz`` and ``python -m tomviz --help``
do not import torch and transformers; ``tomviz.load``, ``tomviz.inspect`` etc. work as before, and so
does ``tomviz.<submodule>`` after a bare ``import tomviz``.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the same names, for type checkers and readers (tests/test_layers.py counts these imports)
    from tomviz.api import InspectResult, inspect, patch, unpatch
    from tomviz.merge import METHODS, get_method
    from tomviz.models.loading import DEFAULT_MODELS, LoadedModel, ModelLoadError, load
    from tomviz.trace import Trace

__version__ = "0.1.0"
_EXPORTS = {  # name → the module that defines it
    "InspectResult": "tomviz.api", "inspect": "tomviz.api", "patch": "tomviz.api", "unpatch": "tomviz.api",
    "METHODS": "tomviz.merge", "get_method": "tomviz.merge",
    "DEFAULT_MODELS": "tomviz.models.loading", "LoadedModel": "tomviz.models.loading",
    "ModelLoadError": "tomviz.models.loading", "load": "tomviz.models.loading",
    "Trace": "tomviz.trace",
}
__all__ = ["DEFAULT_MODELS", "METHODS", "InspectResult", "LoadedModel", "ModelLoadError", "Trace", "get_method", "inspect", "load", "patch", "unpatch"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:  # a submodule, as `import tomviz; tomviz.api.run(...)` found it when this file imported everything
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
