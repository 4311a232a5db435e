from __future__ import annotations

import pytest

from tomviz.merge.schedule import (
    ScheduleError, check_schedule, decreasing_schedule, max_total_removable, resolve_schedule, schedule_from_ratio, token_counts,
)


@pytest.mark.parametrize("schedule", ["constant", "decreasing"])
@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.5, 0.9, 0.95])
def test_ratio_removes_that_fraction_and_respects_limits(ratio, schedule):
    per_layer = schedule_from_ratio(ratio, num_layers=12, num_tokens=257, num_protected=1, schedule=schedule)
    assert sum(per_layer) == round(ratio * 256)
    check_schedule(per_layer, 257, 1)  # raises if a layer exceeds half its unprotected tokens


def test_constant_ratio_is_even():
    schedule = schedule_from_ratio(0.5, 12, 197, 1)
    assert max(schedule) - min(schedule) <= 1


def test_decreasing_goes_down():
    assert decreasing_schedule(8, 5) == [16, 12, 8, 4, 0]
    schedule = schedule_from_ratio(0.5, 12, 197, 1, "decreasing")
    assert schedule == sorted(schedule, reverse=True) and schedule[-1] == 0


def test_impossible_ratio_is_reported():
    with pytest.raises(ScheduleError, match="at most"):
        schedule_from_ratio(0.9, 2, 197, 1)
    with pytest.raises(ScheduleError):
        schedule_from_ratio(0.99, 12, 197, 1)
    assert max_total_removable(2, 197, 1) == 98 + 49


def test_explicit_and_constant_forms():
    assert resolve_schedule([13] * 12, None, 12, 197, 1) == [13] * 12
    assert token_counts(197, [13] * 12)[-1] == 41
    with pytest.raises(ScheduleError, match="entries"):
        resolve_schedule([1, 2], None, 12, 197, 1)
    with pytest.raises(ScheduleError, match="only"):
        resolve_schedule([120] + [0] * 11, None, 12, 197, 1)
    # a plain int behaves as ToMe's: later layers remove what they can
    assert resolve_schedule(16, None, 12, 197, 1) == [16] * 11 + [10]
    with pytest.raises(ScheduleError, match="either"):
        resolve_schedule(1, 0.5, 12, 197, 1)


def test_the_old_keyword_mode_still_works_with_a_warning():
    from tomviz.merge.schedule import renamed_mode

    with pytest.warns(DeprecationWarning, match=r"inspect\(schedule=...\)"):
        assert renamed_mode("constant", "decreasing", "inspect") == "decreasing"
    assert renamed_mode("decreasing", None, "inspect") == "decreasing"
    with pytest.raises(ScheduleError, match="unknown schedule 'fast'"):
        resolve_schedule(2, None, 4, 17, 1, "fast")
