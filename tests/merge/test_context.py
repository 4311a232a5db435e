"""tomviz/merge/context.py: one per-call state helper for the encoder and the LLM states."""
from __future__ import annotations

import threading

from tomviz.merge.context import PerCallState
from tomviz.merge.engine import MergeConfig, MergeState, current_state
from tomviz.merge.tome import ToMe


class Outer(PerCallState, context="test_outer"):
    pass


class Inner(Outer):  # shares Outer's variable, as EncoderState shares MergeState's
    pass


class Other(PerCallState, context="test_other"):
    pass


def test_a_family_has_one_variable_and_states_nest():
    a, b, other = Outer(), Inner(), Other()
    assert Outer.current() is None and Other.current() is None
    with a:
        with other:
            with b:
                assert Outer.current() is b and Inner.current() is b and Other.current() is other
            assert Outer.current() is a
        assert Other.current() is None
    assert Outer.current() is None


def test_the_same_state_can_be_entered_twice():
    a = Outer()
    with a:
        with a:
            assert Outer.current() is a
        assert Outer.current() is a
    assert Outer.current() is None


def test_each_thread_sees_its_own_merge_state():
    barrier = threading.Barrier(4)
    seen, errors = {}, []

    def work(i: int) -> None:
        state = MergeState(MergeConfig(method=ToMe(), r=i), num_protected=1, num_layers=1)
        with state:
            barrier.wait()
            seen[i] = current_state()
            barrier.wait()
        if current_state() is not None:
            errors.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and [seen[i].config.r for i in range(4)] == [0, 1, 2, 3]
