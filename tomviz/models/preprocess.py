"""Deprecated: image decoding moved to :mod:`tomviz.inputs.image` (inputs are not models). This module
re-exports it and will be removed in tomviz 0.2.0."""
from __future__ import annotations

import warnings

from tomviz.inputs.image import *  # noqa: F401,F403 - the deprecated names
from tomviz.inputs.image import __all__  # noqa: F401

warnings.warn(
    "tomviz.models.preprocess is deprecated and will be removed in tomviz 0.2.0: import tomviz.inputs.image",
    DeprecationWarning, stacklevel=2,
)
