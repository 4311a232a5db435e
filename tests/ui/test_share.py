"""Shareable views: URL parameters are untrusted; a link names example photos by file name only."""
from urllib.parse import parse_qsl

from tomviz.merge.schedule import MAX_RATIO
from tomviz.ui.common import MAX_PROMPT_CHARS
from tomviz.ui.share import parse_view, view_query

EXAMPLES = ["/srv/app/assets/chelsea.png", "/srv/app/assets/coffee.png"]


def test_a_link_round_trips():
    query = view_query("image", "facebook/dinov2-small", "pitome", "decreasing", 0.7, 9, example="/srv/app/assets/coffee.png")
    assert "srv" not in query and "example=coffee.png" in query
    view = parse_view(dict(parse_qsl(query[1:])), EXAMPLES)
    assert (view.tab, view.model, view.method, view.schedule, view.ratio, view.layer, view.example) == \
        ("image", "facebook/dinov2-small", "pitome", "decreasing", 0.7, 9, "coffee.png")
    assert view.problems == []
    text = parse_view(dict(parse_qsl(view_query("text", "minilm", "tome", "constant", 0.5, 3, prompt="a & b = c?")[1:])), [])
    assert text.prompt == "a & b = c?" and text.tab == "text"


def test_bad_values_keep_the_defaults_and_say_why():
    bad = {"tab": "admin", "model": "/etc", "method": "rm -rf", "schedule": "fast", "ratio": "nan", "layer": "-1",
           "example": "../../etc/passwd", "prompt": "x" * (MAX_PROMPT_CHARS + 1), "utm_source": "ignored"}
    view = parse_view(bad, EXAMPLES)
    assert (view.tab, view.model, view.method, view.schedule, view.ratio, view.layer, view.example, view.prompt) == \
        ("image", None, "tome", "constant", 0.5, None, None, None)
    assert len(view.problems) == 8
    assert any("ratio='nan'" in p and str(MAX_RATIO) in p for p in view.problems)
    assert any("chelsea.png, coffee.png" in p for p in view.problems)  # names, never paths
    for model in ("../models/x", "~/x", "a/b/c", "./assets", "C:\\x"):
        assert parse_view({"model": model}, EXAMPLES).model is None, model
    assert parse_view({"ratio": str(MAX_RATIO + 0.01)}, EXAMPLES).problems
    assert parse_view({"layer": "1e3"}, EXAMPLES).problems
