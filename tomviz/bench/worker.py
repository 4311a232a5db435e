"""The work of one shard: every input under every setting on one model, as result rows.

:class:`ShardWorker` holds one loaded model. The in-process engine calls it directly; the Ray engine
runs the same class as an actor (one model per actor), so both produce the same rows. Per batch of
inputs the unmerged forward runs once and every setting is compared with it
(:func:`tomviz.measure.compare`, the sweep's metric code). A bad input, a label the model does not
have, an unknown method or a ratio a method cannot reach gives rows with ``error`` set; the shard goes on.
Clips run their temporal methods one clip at a time (:mod:`tomviz.bench.clips`) with a per-frame image model,
or go through a video encoder's (VideoMAE's) batches like images.
"""
from __future__ import annotations

import os
import socket
from functools import partial
from typing import Any

import torch

from tomviz.bench.clips import clip_rows, read_clip_for_encoder
from tomviz.bench.inputs import Item, label_id
from tomviz.bench.results import COLUMNS
from tomviz.bench.spec import BenchSpec, Setting, Shard
from tomviz.measure import Forward, SettingMetrics, compare, measured_forward
from tomviz.merge.engine import MergeConfig
from tomviz.models.loading import LoadedModel, PreparedInput, load

Row = dict[str, Any]


class ShardWorker:
    """One model on one device; :meth:`run` computes a shard's rows."""

    def __init__(self, model: str, spec: BenchSpec, device: str | None = None, threads: int | None = None):
        if threads:
            torch.set_num_threads(int(threads))
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.spec = spec
        self.loaded: LoadedModel = load(model, device=device)
        self.model = model
        self.device = _device_name(self.loaded.device)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self._warm = False

    def run(self, shard: Shard) -> list[Row]:
        """Rows (``COLUMNS``) of every item of ``shard`` × every setting, in item then setting order."""
        rows: dict[tuple[str, str], Row] = {}
        ready: list[tuple[Item, PreparedInput, int | None, str | None]] = []
        for item in shard.items:
            if item.is_clip and self.loaded.modality == "image":  # temporal methods over the frames' tokens
                clip = clip_rows(self.loaded, self.spec, item.path, partial(self._row, shard, item), _message)
                rows.update(((item.name, r["setting"]), r) for r in clip)
                continue
            try:
                prepared = self._prepare(item)
            except Exception as err:  # noqa: BLE001 - any unreadable input is reported on its rows
                for setting in self.spec.settings:
                    rows[item.name, setting.key] = self._row(shard, item, setting, error=f"input: {_message(err)}")
                continue
            try:
                target = label_id(item.label, self.loaded.labels)
                label_error = None
            except ValueError as err:
                target, label_error = None, f"label: {err}"
            ready.append((item, prepared, target, label_error))
        for batch in self._batches(ready):
            inputs = _stack([p for _, p, _, _ in batch])
            base_config = MergeConfig.unmerged(extra=inputs.method_extra())
            if not self._warm:  # the first forward in a process pays one-off costs: not timed
                measured_forward(self.loaded, inputs, base_config)
                self._warm = True
            base = measured_forward(self.loaded, inputs, base_config)
            base_top1 = base.embeddings.argmax(1) if base.classifier else None
            for setting in self.spec.settings:
                try:
                    config = setting.config(self.spec.method_options.get(setting.method), inputs.method_extra())
                    merged = measured_forward(self.loaded, inputs, config)
                    metrics = compare(merged, base)
                except Exception as err:  # noqa: BLE001 - unknown method, unreachable ratio, a method's own error
                    for item, _, _, _ in batch:
                        rows[item.name, setting.key] = self._row(shard, item, setting, error=_message(err))
                    continue
                for i, (item, _, target, label_error) in enumerate(batch):
                    rows[item.name, setting.key] = self._measured_row(
                        shard, item, setting, metrics[i], merged, base, len(batch), target, label_error,
                        None if base_top1 is None else int(base_top1[i]),
                    )
        return [rows[item.name, s.key] for item in shard.items for s in self.spec.settings]

    # -- helpers -------------------------------------------------------------------------
    def _prepare(self, item: Item) -> PreparedInput:
        if item.text is not None:
            return self.loaded.prepare(item.text)
        if self.loaded.modality == "text":
            raise ValueError(f"{self.model} is a text model; {item.name} is an image")
        if self.loaded.modality == "video":
            if not item.is_clip:
                raise ValueError(f"{self.model} is a video encoder; {item.name} is not a clip")
            return self.loaded.prepare(read_clip_for_encoder(self.loaded, item.path))
        return self.loaded.prepare(item.path)

    def _batches(self, ready: list) -> list[list]:
        """Consecutive inputs of the same tensor shapes, at most ``batch_size`` together (text: one each)."""
        size = 1 if self.loaded.modality == "text" else self.spec.batch_size
        batches: list[list] = []
        for entry in ready:
            shape = {k: tuple(v.shape) for k, v in entry[1].tensors.items()}
            last = batches[-1] if batches else None
            if last and len(last) < size and {k: tuple(v.shape) for k, v in last[0][1].tensors.items()} == shape:
                last.append(entry)
            else:
                batches.append([entry])
        return batches

    def _row(self, shard: Shard, item: Item, setting: Setting, **values: Any) -> Row:
        row: Row = dict.fromkeys(COLUMNS)
        row.update(model=self.model, item=item.name, label=item.label, shard=shard.name, setting=setting.key,
                   method=setting.method, ratio=setting.ratio, r=setting.r, schedule=setting.schedule, prop_attn=setting.prop_attn,
                   device=self.device, worker=self.worker)
        row.update(values)
        return row

    def _measured_row(self, shard: Shard, item: Item, setting: Setting, metrics: SettingMetrics, merged: Forward,
                      base: Forward, batch: int, target: int | None, label_error: str | None, base_top1: int | None) -> Row:
        a = metrics.agreement
        return self._row(
            shard, item, setting, label_id=target, tokens_in=metrics.tokens_in, tokens_out=metrics.tokens_out,
            gflops=metrics.gflops, base_gflops=metrics.base_gflops, cosine=a.cosine, top1_agree=a.top1_agree,
            top5_overlap=a.top5_overlap, correct=None if target is None or a.top1 is None else a.top1 == target,
            base_correct=None if target is None or base_top1 is None else base_top1 == target,
            seconds=merged.seconds / batch, base_seconds=base.seconds / batch, batch_size=batch, error=label_error,
        )


def _stack(prepared: list[PreparedInput]) -> PreparedInput:
    """One batch from inputs of equal shapes (the first one's description)."""
    if len(prepared) == 1:
        return prepared[0]
    tensors = {k: torch.cat([p.tensors[k] for p in prepared]) for k in prepared[0].tensors}
    return PreparedInput(tensors=tensors, meta=prepared[0].meta)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{torch.get_num_threads()}t"


def _message(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if not isinstance(err, ValueError) else text
