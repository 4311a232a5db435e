"""``python -m tomviz``: see :mod:`tomviz.cli`."""
from tomviz.cli import main

raise SystemExit(main())
