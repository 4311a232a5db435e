"""The Gradio app's pieces: pure computations (:mod:`compute`) and one builder per tab."""
