"""The Gradio app's pieces: one builder per tab (``*_tab.py``), the life-cycle the Image and Text tabs share
(:mod:`~tomviz.ui.lifecycle`), shared widgets, examples and bounds (:mod:`~tomviz.ui.common`) and shareable
links (:mod:`~tomviz.ui.share`). The computations live below, in :mod:`tomviz.analysis` and its siblings."""
