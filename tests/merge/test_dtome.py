import math

import pytest
import torch

from tomviz.merge import MergeInputs, get_method
from tomviz.merge.dtome import load_calibration, DEFAULT_CALIBRATION
from tests import tiny
from tests.merge.helpers import check_plan, unit

# positions 0 (CLS, A) 1 (B) 2 (A) 3 (B) 4 (A): token 2 proposes 1 at cos 0.8, token 4 proposes 3 at 0.6
METRIC = unit([0, 0, 0, 1], [1, 0, 0, 0], [0.8, 0.6, 0, 0], [0, 0, 1, 0], [0, 0, 0.6, 0.8])


@pytest.mark.parametrize("threshold, removed", [(0.9, 0), (0.7, 1), (0.5, 2)])
def test_merges_every_proposal_above_threshold(threshold, removed):
    plan = get_method("dtome", threshold=threshold).plan(MergeInputs(metric=METRIC), 1)
    check_plan(plan)
    assert plan.num_in - plan.num_out == removed


def test_per_layer_thresholds_and_limit():
    method = get_method("dtome", thresholds=[2.0, -2.0])
    assert method.plan(MergeInputs(metric=METRIC, layer=0, num_layers=2), 1).num_out == 5
    # everything passes, but a layer removes at most half its unprotected tokens
    assert method.plan(MergeInputs(metric=METRIC, layer=1, num_layers=2), 1).num_out == 3
    with pytest.raises(ValueError):
        get_method("dtome", thresholds=[0.5]).plan(MergeInputs(metric=METRIC, layer=1, num_layers=2), 1)


def test_shipped_calibration_is_monotone_in_r():
    r_grid, table = load_calibration(str(DEFAULT_CALIBRATION))
    assert table.shape == (len(r_grid), 12)
    # merging more needs a lower threshold, layer by layer
    assert (table[1:] <= table[:-1] + 1e-6).all()
    method = get_method("dtome")
    mid = method.layer_threshold(3, (r_grid[0] + r_grid[1]) / 2)
    assert math.isclose(mid, (table[0, 3] + table[1, 3]) / 2)


def test_a_model_deeper_than_the_calibration_table_is_refused():
    """The shipped table covers dinov2-small's 12 layers: layer 12 gets no silent copy of layer 11's row."""
    method = get_method("dtome")
    method.layer_threshold(11, 4)
    with pytest.raises(ValueError, match="covers 12 layers, but layer 12 merges"):
        method.layer_threshold(12, 4)


# ---------------------------------------------------------------- each image its own count (DyMU)
# image 1: token 4 = (0, 0.3, 0.3, 0.9)/|.| proposes token 3 at cos 0.30 only
OTHER = unit([0, 0, 0, 1], [1, 0, 0, 0], [0.8, 0.6, 0, 0], [0, 0, 1, 0], [0, 0.3, 0.3, 0.9])


def test_each_image_keeps_its_own_count_in_a_batch():
    metric = torch.cat([METRIC, OTHER])
    plan = get_method("dtome", threshold=0.5).plan(MergeInputs(metric=metric), 1)
    # image 0 removes 2 (2→1, 4→3), image 1 removes 1 (2→1); DyMU's order: CLS, kept A, B
    assert plan.num_out == 4 and plan.ragged
    assert plan.dst.tolist() == [[0, 1, 1, 2, 2], [0, 2, 2, 3, 1]]
    x = torch.arange(10.0).view(2, 5, 1)
    sizes = torch.tensor([[1.0, 1, 3, 1, 1], [1.0, 2, 1, 1, 1]]).unsqueeze(-1)
    merged, new_sizes = plan.merge(x, sizes)
    torch.testing.assert_close(merged[..., 0], torch.tensor([[0, (1 + 2 * 3) / 4, 3.5, 0], [5, 9, (6 * 2 + 7) / 3, 8]]))
    assert new_sizes[..., 0].tolist() == [[1, 4, 2, 0], [1, 1, 3, 1]]  # the empty slot has size 0
    assert plan.reduce_any(torch.ones(2, 5, dtype=torch.bool)).tolist() == [[True, True, True, False], [True] * 4]
    assert plan.edges.src.tolist() == [[2, 4], [2, -1]]


def test_padding_never_merges_and_is_not_counted():
    valid = torch.tensor([[True, True, True, True, False]])
    metric = METRIC.clone()
    plan = get_method("dtome", threshold=0.5).plan(MergeInputs(metric=metric, valid=valid), 1)
    assert plan.dst.tolist() == [[0, 1, 1, 2, 3]]  # only 2→1; the padding token 4 stays, last


def test_max_r_ratio_caps_each_image():
    plan = get_method("dtome", threshold=0.5, max_r_ratio=0.5).plan(MergeInputs(metric=METRIC), 2)
    assert plan.dst.tolist() == [[0, 2, 2, 3, 1]]  # int(0.5 * 2) = 1: the best proposal (2→1, 0.8) only


@pytest.fixture(scope="module")
def tiny_vit():
    from tomviz.models.loading import _wrap

    return _wrap("tiny-vit", tiny.vit(pooling=False, num_hidden_layers=3, patch_size=4, seed=0))


def _run(loaded, pixels, method, r):
    from tomviz.api import run
    from tomviz.merge.engine import MergeConfig
    from tomviz.models.loading import PreparedInput

    return run(loaded, PreparedInput(tensors={"pixel_values": pixels}), MergeConfig(method=method, r=r))


def test_batch_equals_batch_of_one_on_a_vit(tiny_vit):
    torch.manual_seed(3)
    images = torch.randn(5, 3, 32, 32) * torch.linspace(0.2, 2.0, 5).view(5, 1, 1, 1)  # plainer to busier
    method = get_method("dtome", threshold=0.6)
    out, state = _run(tiny_vit, images, method, [1, 1, 1])
    lengths = []
    for i in range(5):
        alone, _ = _run(tiny_vit, images[i : i + 1], method, [1, 1, 1])
        n = alone.last_hidden_state.shape[1]
        lengths.append(n)
        assert int(state.valid[i].sum()) == n
        torch.testing.assert_close(out.last_hidden_state[i, :n], alone.last_hidden_state[0], atol=1e-5, rtol=1e-5)
    assert len(set(lengths)) > 1, "the images should keep different counts"


# ---------------------------------------------------------------- DyMU's calibration rule


def test_dymu_calibration_step_by_hand():
    from tomviz.tools.calibrate_dtome import DyMUCalibration

    metric = torch.cat([METRIC, OTHER])  # proposals: image 0: 0.8, 0.6; image 1: 0.8, 0.30
    cal = DyMUCalibration()
    plan = cal.plan(MergeInputs(metric=metric), 1)  # r·B = 2: the two 0.8 merge, one per image
    assert plan.dst.tolist() == [[0, 2, 2, 3, 1], [0, 2, 2, 3, 1]]
    assert cal.recorded[0] == [pytest.approx(0.6)]  # the 3rd best
    cal.plan(MergeInputs(metric=metric), 2)  # r·B = 4 merges all four; the 5th is CLS's -inf, clamped to 0
    assert cal.recorded[0][1] == 0.0


def test_dymu_running_mean():
    from tomviz.tools.calibrate_dtome import running_threshold

    assert running_threshold([0.5, 0.7, 0.9]) == pytest.approx(0.7)  # 0.5, then (0.5 + 0.7) / 2, then (0.6·2 + 0.9) / 3
    assert running_threshold([]) == 1.0  # DyMU's "no merging"


def test_dymu_calibration_on_one_batch_merges_r_per_image_on_average(tiny_vit):
    from tomviz.tools.calibrate_dtome import calibrate_thresholds_dymu

    torch.manual_seed(4)
    images = [torch.randn(1, 3, 32, 32) for _ in range(4)]
    thresholds = calibrate_thresholds_dymu(tiny_vit, images, [3, 0, 0], batch_size=4)
    assert thresholds[1:] == [1.0, 1.0]
    # one batch: τ_0 is the (3·4+1)-th best proposal, so exactly 3·4 proposals pass it
    _, state = _run(tiny_vit, torch.cat(images), get_method("dtome", thresholds=thresholds), [3, 0, 0])
    padded = 0 if state.valid is None else int((~state.valid).sum())
    assert 4 * state.removed[0] + padded == 12
