import math

import pytest

from tomviz.merge import MergeInputs, get_method
from tomviz.merge.dtome import load_calibration, DEFAULT_CALIBRATION
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
