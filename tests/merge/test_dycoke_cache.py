"""DyCoke's decode-time cache pruning (KD-TAO/DyCoke @dd74634, ``modeling_qwen2.py``
``PrunableDynamicCache.dycoke_pruning`` / ``update_cache``) on hand-worked inputs."""
from __future__ import annotations

import pytest
import torch

from tomviz.merge.dycoke_cache import attention_cosine, dycoke_cache_keep, dycoke_keep_count

ATTENTION = torch.tensor([0.1, 0.5, 0.2, 0.05, 0.15])


def test_keep_count_is_the_originals_expression():
    assert dycoke_keep_count(196, 0.8) == 39  # int(39.2)
    assert dycoke_keep_count(10, 0.8) == 1  # 10 * (1 - 0.8) = 1.9999999999999996
    assert dycoke_keep_count(5, 0.6) == 2
    with pytest.raises(ValueError, match="lie in"):
        dycoke_keep_count(5, -0.1)


def test_first_step_prunes():
    """No previous step: cosine 0 < 0.9, so the step keeps int(5 * 0.4) = 2 tokens, the two most attended: 1, 2."""
    assert attention_cosine(ATTENTION, None) == 0.0
    assert dycoke_cache_keep(ATTENTION, None, prune=0.6).tolist() == [1, 2]


def test_a_stable_pattern_attends_to_every_token():
    """The same pattern (cosine 1) and a scaled one: no pruning in this step (None: every image token)."""
    assert dycoke_cache_keep(ATTENTION, ATTENTION.clone(), prune=0.6) is None
    assert dycoke_cache_keep(ATTENTION, 3 * ATTENTION, prune=0.6) is None


def test_a_changed_pattern_prunes_by_this_steps_attention():
    """Previous (1, 0, 0, 0, 0) against (.1, .5, .2, .05, .15): cosine .1 / |a| = .1 / .5937 = .168 < .9 → keep the
    top 2 of this step's attention: 1, 2."""
    previous = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0])
    assert attention_cosine(ATTENTION, previous) == pytest.approx(0.1 / float(ATTENTION.norm()), rel=1e-6)
    assert dycoke_cache_keep(ATTENTION, previous, prune=0.6).tolist() == [1, 2]


def test_threshold_is_strict():
    """A cosine equal to the threshold does not prune (the original prunes when ``similarity < 0.9``)."""
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.9, (1 - 0.81) ** 0.5])
    cosine = attention_cosine(a, b)
    assert dycoke_cache_keep(a, b, prune=0.5, threshold=cosine) is None
    assert dycoke_cache_keep(a, b, prune=0.5, threshold=cosine + 1e-6).tolist() == [0]
