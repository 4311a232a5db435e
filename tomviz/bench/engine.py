"""Run a benchmark: in this process, or on Ray (a local Ray started on the spot, or a cluster).

Design: Ray actors, not Ray Data. Each actor is a :class:`~tomviz.bench.worker.ShardWorker` holding one
model; the driver hands it shards one at a time (``ray.wait`` on the results), writes each finished
shard as its own Parquet file (named by the shard's hash), and moves the progress bar. That gives
what the benchmark needs directly: a rerun lists the shard files and submits only the missing ones; a
killed worker loses only the shard it held (the actor restarts and the shard is retried once, else
it is reported and left for the next run); there is no read stage competing with the actors for
CPUs (seen with Ray 2.60: Ray Data stalled on 2 CPUs with one CPU per actor), and the in-process engine
runs the very same worker code, so the two agree setting by setting.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from tomviz.bench.inputs import Item
from tomviz.bench.results import read_rows, summarise, write_rows, write_summary
from tomviz.bench.spec import BenchSpec, Shard, make_shards
from tomviz.bench.worker import ShardWorker

MAX_ACTOR_REPLACEMENTS = 3  # per model: new actors started after actors died for good


@dataclass
class BenchRun:
    """What a run did and where its results are."""

    out: Path
    shards: list[Shard]
    ran: list[str] = field(default_factory=list)  # shard names computed by this run
    skipped: list[str] = field(default_factory=list)  # already on disk
    failed: dict[str, str] = field(default_factory=dict)  # shard name -> why (left for the next run)
    seconds: float = 0.0

    def rows(self) -> list[dict[str, Any]]:
        """Every row of the shards on disk, in shard order."""
        rows: list[dict[str, Any]] = []
        for shard in self.shards:
            path = shard.path(self.out)
            if path.exists():
                rows += read_rows(path)
        return rows


def run_bench(
    spec: BenchSpec,
    items: Sequence[Item],
    out: str | Path,
    engine: str = "ray",
    workers: int = 1,
    address: str | None = None,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    threads: int | None = None,
    device: str | None = None,
    progress: bool = False,
    ship_code: bool = False,
    command: str | None = None,
) -> BenchRun:
    """Compute every shard of ``spec`` × ``items`` not yet in ``out`` and write the results.

    engine: ``"ray"`` (actors; ``ray.init(address)`` unless Ray is already initialised, local when
    ``address`` is None) or ``"local"`` (this process, one worker). ``threads``: torch threads per worker
    (default: ``cpus_per_worker`` rounded, at least 1). ``ship_code``: send this tomviz checkout to the
    cluster's workers (Ray ``py_modules``) instead of expecting it installed there. ``command``: the
    command line that made the run, kept in summary.json's ``meta`` so the file says how it was made. Writes
    ``out/shards/<model>/shard-*.parquet``, then ``results.parquet`` (all rows) and ``summary.json``.
    """
    start = time.perf_counter()
    out = Path(out)
    shards = make_shards(spec, items)
    run = BenchRun(out=out, shards=shards)
    pending = []
    for shard in shards:
        (run.skipped if shard.path(out).exists() else pending).append(shard)
    run.skipped = [s.name for s in run.skipped]
    threads = threads or max(1, int(round(cpus_per_worker)))
    bar = _progress(sum(len(s.items) for s in pending) * len(spec.settings), progress)

    def done(shard: Shard, rows: list[dict[str, Any]]) -> None:
        write_rows(rows, shard.path(out))
        run.ran.append(shard.name)
        bar(len(rows))

    if pending and engine == "local":
        _run_local(spec, pending, device, threads, done)
    elif pending and engine == "ray":
        _run_ray(spec, pending, workers, address, cpus_per_worker, gpus_per_worker, threads, device, ship_code, done, run.failed)
    elif engine not in ("local", "ray"):
        raise ValueError(f"unknown engine {engine!r}: use 'ray' or 'local'")
    bar(None)
    rows = run.rows()
    write_rows(rows, out / "results.parquet")
    write_summary(summarise(rows), out / "summary.json", meta={
        "inputs": len(items), "models": spec.models, "settings": len(spec.settings), "batch_size": spec.batch_size,
        "shards": len(shards), "failed_shards": run.failed, "engine": engine, "workers": workers if engine == "ray" else 1,
        **({"command": command} if command else {}),
    })
    run.seconds = time.perf_counter() - start
    return run


def _progress(total: int, enabled: bool) -> Callable[[int | None], None]:
    """``update(n)``; ``update(None)`` closes. A tqdm bar of inputs × settings when enabled."""
    if not enabled:
        return lambda n: None
    from tqdm import tqdm

    bar = tqdm(total=total, desc="bench", unit="input×setting")
    return lambda n: bar.close() if n is None else bar.update(n)


def _run_local(spec: BenchSpec, shards: list[Shard], device: str | None, threads: int, done) -> None:
    import torch

    before = torch.get_num_threads()
    try:
        for model in dict.fromkeys(s.model for s in shards):
            worker = ShardWorker(model, spec, device=device, threads=threads)
            for shard in (s for s in shards if s.model == model):
                done(shard, worker.run(shard))
    finally:
        torch.set_num_threads(before)


def _run_ray(spec, shards, workers, address, cpus_per_worker, gpus_per_worker, threads, device, ship_code, done, failed) -> None:
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, runtime_env=_runtime_env(address, ship_code))
    try:
        actor_class = ray.remote(ShardWorker).options(
            num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, max_restarts=1, max_task_retries=1,
        )
        for model in dict.fromkeys(s.model for s in shards):
            queue = [s for s in shards if s.model == model]
            _ray_model(ray, actor_class, model, spec, queue, workers, threads, device, done, failed)
    finally:
        if started:
            ray.shutdown()


def _ray_model(ray, actor_class, model, spec, queue, workers, threads, device, done, failed) -> None:
    """Shards of one model on a pool of ``workers`` actors, one shard per actor at a time."""
    new = lambda: actor_class.remote(model, spec, device=device, threads=threads)  # noqa: E731
    actors = [new() for _ in range(max(1, min(workers, len(queue))))]
    replacements = 0
    in_flight: dict[Any, tuple[Any, Shard]] = {}

    def submit(actor) -> None:
        if queue:
            shard = queue.pop(0)
            in_flight[actor.run.remote(shard)] = (actor, shard)

    for actor in actors:
        submit(actor)
    try:
        while in_flight:
            (ref,), _ = ray.wait(list(in_flight), num_returns=1)
            actor, shard = in_flight.pop(ref)
            try:
                rows = ray.get(ref)
            except ray.exceptions.RayActorError as err:  # the actor died (and its restart did not save the shard)
                failed[shard.name] = f"worker died: {str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}"
                ray.kill(actor, no_restart=True)
                if replacements >= MAX_ACTOR_REPLACEMENTS:
                    continue
                replacements += 1
                actor = new()
                actors.append(actor)
            except ray.exceptions.RayError as err:  # the shard raised (a model that cannot load, ...)
                failed[shard.name] = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            else:
                done(shard, rows)
            submit(actor)
    finally:
        for actor in actors:
            ray.kill(actor)


def _runtime_env(address: str | None, ship_code: bool) -> dict[str, Any] | None:
    """Local Ray: the workers import tomviz from this checkout (PYTHONPATH). A cluster: the code is
    expected there, or shipped with ``ship_code``."""
    package = Path(__file__).resolve().parents[1]
    if ship_code:
        return {"py_modules": [str(package)]}
    if address is None:
        paths = [str(package.parent)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        return {"env_vars": {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}}
    return None
