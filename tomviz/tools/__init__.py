"""Offline tools (run by a maintainer, not by the app): ``python -m tomviz.tools.calibrate_dtome``."""
