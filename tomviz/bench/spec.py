"""What a benchmark sweeps: models × methods × (ratios or r) × proportional attention, and how the
inputs are cut into shards (the unit of work, of retry and of the result files)."""
from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tomviz.bench.inputs import Item
from tomviz.merge.checks import renamed_mode
from tomviz.merge.engine import MergeConfig
from tomviz.merge.request import MergeRequest

DEFAULT_METHODS = ("tome", "pitome", "evit", "random")
DEFAULT_RATIOS = (0.25, 0.5, 0.75)
DEFAULT_CLIP_METHODS = ("holitom", "fastvid", "dycoke", "framefusion", "rlt", "frame_drop", "tome", "random")  # clips
DEFAULT_FRAMES = 16


@dataclass(frozen=True)
class Setting:
    """One merge setting: a method with a ratio (fraction of the input tokens removed by the last layer)
    or with r (tokens removed per layer), spread by ``schedule``."""

    method: str
    ratio: float | None = None
    r: int | None = None
    schedule: str = "constant"  # "constant" | "decreasing"
    prop_attn: bool = True

    @property
    def key(self) -> str:
        """A short unique label, e.g. ``tome ratio=0.5 constant prop``."""
        amount = f"ratio={self.ratio:g}" if self.ratio is not None else f"r={self.r}"
        return f"{self.method} {amount} {self.schedule} {'prop' if self.prop_attn else 'noprop'}"

    def request(self, options: dict[str, Any] | None = None) -> MergeRequest:
        """This setting with the method's ``options``."""
        return MergeRequest(method=self.method, method_options=dict(options or {}), ratio=self.ratio, r=self.r,
                            schedule=self.schedule, prop_attn=self.prop_attn)

    def config(self, options: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> MergeConfig:
        """The merge config; ValueError for an unknown method or bad options."""
        return self.request(options).config(extra=extra)


@dataclass
class BenchSpec:
    """Everything that decides the numbers of a benchmark (its hash names the shard files)."""

    models: list[str]
    settings: list[Setting]
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    batch_size: int = 8  # images per forward (text runs one prompt per forward: padding would change the merging)
    shard_size: int = 32  # inputs per shard: the unit of work, retry and result file
    frames: int = DEFAULT_FRAMES  # clips: frames sampled per clip for a per-frame model (tomviz.bench.clips)

    def settings_hash(self) -> str:
        data = {"settings": [asdict(s) for s in self.settings], "options": self.method_options, "batch": self.batch_size}
        if self.frames != DEFAULT_FRAMES:  # the hash of benchmarks made before clips were read stays the same
            data["frames"] = self.frames
        return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]


def make_settings(methods: Sequence[str], ratios: Sequence[float] = (), rs: Sequence[int] = (), schedule: str = "constant",
                  prop_attn: Sequence[bool] = (True,)) -> list[Setting]:
    """The grid methods × (ratios, then r values) × proportional attention."""
    amounts = [("ratio", float(x)) for x in ratios] + [("r", int(x)) for x in rs]
    if not amounts:
        raise ValueError("no ratios and no r values: give at least one")
    return [Setting(method=m, schedule=schedule, prop_attn=bool(p), **{kind: value})
            for m in methods for kind, value in amounts for p in prop_attn]


def read_toml(path: str | Path) -> dict[str, Any]:
    """Options from a small TOML file. Keys: ``models``, ``methods``, ``ratios``, ``r``, ``schedule``,
    ``prop_attn`` (a bool or a list of them), ``batch_size``, ``shard_size``, and ``[method_options.NAME]``
    tables, e.g.::

        models = ["facebook/deit-small-patch16-224"]
        methods = ["tome", "random"]
        ratios = [0.25, 0.5]
        prop_attn = [true, false]
        [method_options.dtome]
        threshold = 0.9
    """
    data = tomllib.loads(Path(path).read_text())
    if "mode" in data and "schedule" not in data:  # the key's old name
        data["schedule"] = renamed_mode(None, data.pop("mode"), Path(path).name)
    known = {"models", "methods", "ratios", "r", "schedule", "prop_attn", "batch_size", "shard_size", "method_options", "frames"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown keys {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    if isinstance(data.get("prop_attn"), bool):
        data["prop_attn"] = [data["prop_attn"]]
    return data


@dataclass(frozen=True)
class Shard:
    """A slice of the inputs for one model, with every setting: one task, one Parquet file."""

    model: str
    index: int
    items: tuple[Item, ...]
    spec_hash: str  # of the settings and the items: a changed benchmark never reuses an old file

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}-{self.spec_hash}"

    def path(self, out: Path) -> Path:
        return Path(out) / "shards" / model_slug(self.model) / f"{self.name}.parquet"


def model_slug(model: str) -> str:
    """A folder name for a model name, id or path."""
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in model.strip().strip("/"))[-60:]
    return f"{slug}-{hashlib.sha1(model.encode()).hexdigest()[:6]}"


def make_shards(spec: BenchSpec, items: Sequence[Item]) -> list[Shard]:
    """Every model's items cut into ``spec.shard_size`` slices, in order."""
    if spec.shard_size < 1 or spec.batch_size < 1:
        raise ValueError("shard_size and batch_size must be at least 1")
    settings = spec.settings_hash()
    shards = []
    for model in spec.models:
        for index, start in enumerate(range(0, len(items), spec.shard_size)):
            chunk = tuple(items[start:start + spec.shard_size])
            digest = hashlib.sha1(json.dumps([settings, [asdict(i) for i in chunk]], sort_keys=True).encode()).hexdigest()[:10]
            shards.append(Shard(model=model, index=index, items=chunk, spec_hash=digest))
    return shards
