"""The Compare tab's endpoints through gradio_client against the launched app."""
from __future__ import annotations

from pathlib import Path

import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from tomviz.ui import compare_tab as ct
from tomviz.ui import sweep_section

CAT = str(Path(__file__).resolve().parents[2] / "assets" / "chelsea.png")
# compare() returns ct.CompareOutputs (named fields); gradio_client returns the same fields in order, less the session
API_FIELDS = ct.CompareOutputs._fields[1:]


def test_client_compare_layer_sweep(client, monkeypatch):
    monkeypatch.setattr(sweep_section, "SWEEP_RUNS", 1)  # the app runs in this process
    monkeypatch.setattr(sweep_section, "SWEEP_WARMUP", 0)
    out = client.predict(modality="image", image=handle_file(CAT), prompt="", model="dinov2-small", method_a="tome",
                         ratio_a=0.5, method_b="random", ratio_b=0.5, layer=12, api_name="/compare")
    assert Image.open(out[API_FIELDS.index("diff_image")]).size[0] > 50 and "After layer 12" in out[API_FIELDS.index("diff_summary")]
    layer = client.predict(layer=2, api_name="/render_compare_layer")
    assert "After layer 2" in layer[ct.LayerViews._fields.index("diff_summary")]
    fig, table, csv = client.predict(modality="image", image=handle_file(CAT), prompt="", model="dinov2-small",
                                     methods=["tome"], ratios="0, 0.5", api_name="/sweep")
    assert len(table["data"]) == 2 and Path(csv).read_text().startswith("input,method")
    with pytest.raises(AppError, match="no image"):
        client.predict(modality="image", image=None, prompt="", model="dinov2-small", api_name="/compare")
    assert client.predict(layer=3, api_name="/render_compare_layer")  # still serving
