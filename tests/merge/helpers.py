"""Shared checks for the merge-method tests."""
from __future__ import annotations

import numpy as np
import torch

from tomviz.merge.plan import MergePlan


def unit(*rows: list[float]) -> torch.Tensor:
    """``[1, N, C]`` from rows (not normalised: the methods normalise)."""
    return torch.tensor([rows], dtype=torch.float32)


def check_plan(plan: MergePlan, num_protected: int = 1) -> None:
    """Protected tokens alone at 0..P-1; every output has a member; dst in range."""
    dst = plan.dst
    assert int(dst.max()) < plan.num_out and int(dst.min()) >= -1
    for row in dst:
        assert row[:num_protected].tolist() == list(range(num_protected))
        members = torch.bincount(row[row >= 0], minlength=plan.num_out)
        assert bool((members[:num_protected] == 1).all()), "a protected token has company"
        assert bool((members > 0).all()), "an output token has no member"


def check_trace(trace, schedule_driven: bool = True) -> None:
    """Groups partition the kept tokens, CLS alone at 0, fewer tokens at the end."""
    counts = trace.token_counts()
    protected = trace.meta["num_protected"]
    for layer in range(trace.num_layers):
        groups = trace.groups(layer)
        kept = groups[groups >= 0]
        sizes = np.bincount(kept, minlength=trace.sizes(layer).shape[0])
        assert sizes.shape[0] == trace.sizes(layer).shape[0] == counts[layer + 1]
        assert (sizes > 0).all(), f"layer {layer}: an empty group"
        np.testing.assert_allclose(sizes, trace.sizes(layer))
        assert groups[:protected].tolist() == list(range(protected))
        assert (sizes[:protected] == 1).all(), f"layer {layer}: CLS is not alone"
    assert counts[-1] < counts[0]
    if schedule_driven:
        expected = [counts[0]]
        for r in trace.meta["schedule"]:
            expected.append(expected[-1] - r)
        assert counts == expected
