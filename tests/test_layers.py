"""Dependencies point one way: each module of ``tomviz/`` imports only from its own layer or lower ones,
and no two modules import each other (directly or round a longer loop).

Every import counts: at module level, inside functions (lazy) and under ``TYPE_CHECKING``.
A new module must be placed in ``LAYERS`` (the test fails on one it cannot place).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tomviz"

# lowest first; a module belongs to the layer of its longest matching prefix. A prefix may name a module that does
# not exist yet (``tomviz.inputs``, ``tomviz.score_analysis``): only the modules found under tomviz/ are placed.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("trace", ("tomviz.trace",)),  # the Trace type and its patch-grid geometry
    ("merge", ("tomviz.merge",)),  # tensor math: methods → MergePlan, schedules, the per-call MergeState
    ("inputs", ("tomviz.inputs",)),  # decoding what users hand in (images, video clips, frames) and its bounds, no model knowledge
    ("models", ("tomviz.models",)),  # adapters, loading (hub policy, embedded weights), LoadedModel.run, VLM adapters
    # numbers read from a forward or a trace: speed, fidelity, one measured forward, a group's lineage
    ("readers", ("tomviz.speed", "tomviz.fidelity", "tomviz.measure", "tomviz.lineage")),
    ("pictures", ("tomviz.render", "tomviz.scores")),  # pictures and plots; Banzhaf, HBI and attention scores
    ("api", ("tomviz", "tomviz.api", "tomviz.vlm", "tomviz.video", "tomviz.video_encoder")),  # what users call: the package facade, the API, VLM inspection
    # services over many forwards, no gradio
    ("analysis", ("tomviz.analysis", "tomviz.score_analysis", "tomviz.ratio_grid", "tomviz.sweep", "tomviz.bench")),
    ("front", ("tomviz.ui", "tomviz.cli", "tomviz.cli_vlm", "tomviz.cli_video", "tomviz.__main__", "tomviz.tools")),  # gradio, CLI, offline tools
]
RANK = {name: i for i, (name, _) in enumerate(LAYERS)}


def layer_of(module: str) -> str | None:
    """The layer of ``module``; the package itself (``tomviz``, its facade) matches only exactly."""
    best = None
    for name, prefixes in LAYERS:
        for prefix in prefixes:
            inside = module.startswith(prefix + ".") and prefix != "tomviz"
            if (module == prefix or inside) and (best is None or len(prefix) > len(best[1])):
                best = (name, prefix)
    return best[0] if best else None


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, tomviz module) for every import in ``source``, wherever it stands."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((node.lineno, sub if _is_module(sub) else base))
    return [(line, name) for line, name in found if name == "tomviz" or name.startswith("tomviz.")]


def _graph() -> dict[str, list[tuple[int, str]]]:
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        graph[module] = imported_modules(path.read_text(), module, path.name == "__init__.py")
    return graph


def test_every_module_has_a_layer():
    assert [m for m in _graph() if layer_of(m) is None] == []


def test_pictures_scores_and_readers_sit_below_the_api():
    """render, scores, speed and fidelity may not import the API or VLM inspection (it would be an upward import)."""
    below = ["tomviz.render.overlay", "tomviz.scores.banzhaf", "tomviz.speed", "tomviz.fidelity", "tomviz.measure"]
    above = ["tomviz", "tomviz.api", "tomviz.vlm", "tomviz.vlm.result"]
    assert all(RANK[layer_of(low)] < RANK[layer_of(high)] for low in below for high in above)


def test_no_import_from_a_higher_layer():
    upward = []
    for module, imports in _graph().items():
        for line, target in imports:
            if RANK[layer_of(target)] > RANK[layer_of(module)]:
                upward.append(f"{module}:{line} ({layer_of(module)}) imports {target} ({layer_of(target)})")
    assert upward == []


def _edges(graph: dict[str, list[tuple[int, str]]]) -> dict[str, set[str]]:
    """Module → the modules it imports (a package import stands for its ``__init__``; self-imports dropped)."""
    return {m: {t for _, t in imports if t != m and t in graph} for m, imports in graph.items()}


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles():
    """A lazy import that only dodges a cycle is still a cycle."""
    cycle = _cycle(_edges(_graph()))
    assert cycle is None, " → ".join(cycle)


@pytest.mark.parametrize("source, expected", [
    ("import tomviz.ui.common\n", ["tomviz.ui.common"]),
    ("def f():\n    from tomviz.api import run\n", ["tomviz.api"]),  # lazy
    ("from tomviz import merge\n", ["tomviz.merge"]),
    ("from . import engine\n", ["tomviz.merge.engine"]),
])
def test_imports_are_found_wherever_they_stand(source, expected):
    assert [t for _, t in imported_modules(source, "tomviz.merge.base", False)] == expected


def test_a_cycle_is_found():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
