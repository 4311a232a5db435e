"""One merge request type: every entry point parses into it, it alone makes the engine's MergeConfig."""
from __future__ import annotations

from pathlib import Path

import pytest

from tomviz.analysis import Settings
from tomviz.bench.spec import Setting, make_settings, read_toml
from tomviz.cli import build_parser
from tomviz.merge.checks import MAX_RATIO, ScheduleError
from tomviz.merge.pitome import PiToMe
from tomviz.merge.request import MergeRequest
from tomviz.ui.share import parse_view
from tomviz.vlm import Reduction

PACKAGE = Path(__file__).resolve().parents[2] / "tomviz"
RATIO_MESSAGE = f"the merge ratio must be between 0 and {MAX_RATIO}"


def _fields(config):
    return type(config.method), config.r, config.ratio, config.schedule, config.prop_attn


def test_every_source_gives_the_same_config(tmp_path):
    expected = (PiToMe, None, 0.3, "decreasing", True)
    api = MergeRequest.from_kwargs("inspect", method="pitome", ratio=0.3, schedule="decreasing")
    args = build_parser().parse_args(["inspect", "cat.png", "--method", "pitome", "--ratio", "0.3",
                                      "--schedule", "decreasing", "--out", str(tmp_path)])
    toml = tmp_path / "bench.toml"
    toml.write_text('methods = ["pitome"]\nratios = [0.3]\nschedule = "decreasing"\n')
    data = read_toml(toml)
    (setting,) = make_settings(data["methods"], data["ratios"], schedule=data["schedule"])
    link = parse_view({"method": "pitome", "ratio": "0.3", "schedule": "decreasing"}, [])
    sources = {
        "api": api, "cli": MergeRequest.from_flags(args), "toml": setting.request(),
        "link": link.request,
        "app": Settings(method="pitome", ratio=0.3, schedule="decreasing").request,
        "vlm": Reduction("encoder", "pitome", 0.3, schedule="decreasing").request,
    }
    for name, request in sources.items():
        assert _fields(request.config()) == expected, name
    assert _fields(setting.config()) == _fields(Settings(method="pitome", ratio=0.3, schedule="decreasing").config(False))


def test_neither_ratio_nor_r_removes_nothing_and_options_reach_the_method():
    request = MergeRequest.from_kwargs("patch", method="dtome", method_options={"threshold": 0.8})
    config = request.config(trace=True, extra={"patch_grid": (2, 2)}, keep_hidden=True)
    assert config.r == 0 and config.ratio is None and config.method.threshold == 0.8
    assert config.trace and config.keep_hidden and config.extra == {"patch_grid": (2, 2)}
    with pytest.raises(ValueError, match="bad options for tome"):
        MergeRequest(method="tome", method_options={"alpha": 1}).config()


def test_bad_values_read_the_same_everywhere():
    with pytest.raises(ScheduleError, match=RATIO_MESSAGE):
        MergeRequest(ratio=2).check()
    for check in (Settings(ratio=2).check, Reduction("boundary", "tome", 2).check, Setting("tome", ratio=2).config):
        with pytest.raises(ScheduleError, match=RATIO_MESSAGE):
            check()
    (problem,) = parse_view({"ratio": "2"}, []).problems
    assert RATIO_MESSAGE in problem
    with pytest.raises(ScheduleError, match="unknown schedule 'fast'"):
        MergeRequest(schedule="fast").check()
    assert "unknown schedule 'fast'" in parse_view({"schedule": "fast"}, []).problems[0]
    with pytest.raises(ValueError, match="unknown merge method 'nosuch'"):
        Settings(method="nosuch").check()
    assert "unknown merge method 'nosuch'" in parse_view({"method": "nosuch"}, []).problems[0]
    with pytest.raises(ValueError, match="subword does not run on image inputs: it takes text"):
        MergeRequest(method="subword", ratio=0.5, modality="image").check()
    assert MergeRequest(method="subword", modality="text").check().modality == "text"
    with pytest.raises(ValueError, match="unknown place 'decoder'"):
        MergeRequest(place="decoder").check()
    with pytest.raises(ValueError, match="tome works in the encoder or at the boundary or on a clip.s frames, not inside the LLM"):
        Reduction("llm", "tome", 0.5).check()


def test_the_old_name_mode_warns_once_per_entry_point(tmp_path):
    with pytest.warns(DeprecationWarning, match=r"inspect\(schedule=...\).*removed in tomviz 0.2.0"):
        assert MergeRequest.from_kwargs("inspect", ratio=0.5, mode="decreasing").schedule == "decreasing"
    toml = tmp_path / "old.toml"
    toml.write_text('methods = ["tome"]\nmode = "decreasing"\n')
    with pytest.warns(DeprecationWarning, match="old.toml: the key 'mode' is renamed 'schedule'"):
        assert read_toml(toml)["schedule"] == "decreasing"


def test_merge_config_is_made_in_the_engine_and_the_request_only():
    makers = sorted(str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py") if "MergeConfig(" in path.read_text())
    assert makers == ["merge/request.py"] or makers == ["merge/engine.py", "merge/request.py"]
