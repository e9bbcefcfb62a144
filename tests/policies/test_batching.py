import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.path.batching import Batcher, BatchItem, Pace
from policies.path.flush import AdaptiveRule, HybridRule, SizeRule, TimeRule


def names(items):
    return [item.payload for item in items]


def test_size_rule_waits_for_a_full_batch():
    b = Batcher(SizeRule(max_batch=3).build())
    b.offer(BatchItem("a"), 0.0)
    b.offer(BatchItem("b"), 0.1)
    assert math.isinf(b.due_at())
    assert names(b.take(100.0).batch) == []
    b.offer(BatchItem("c"), 0.2)
    assert b.due_at() <= 0.2
    assert names(b.take(0.2).batch) == ["a", "b", "c"]
    assert b.due_at() is None


def test_time_rule_flushes_max_wait_after_the_oldest():
    b = Batcher(TimeRule(max_wait_s=0.05, max_batch=10).build())
    b.offer(BatchItem("a"), 1.0)
    b.offer(BatchItem("b"), 1.02)
    assert b.due_at() == 1.05
    assert b.take(1.04).batch == []
    taken = b.take(1.05)
    assert names(taken.batch) == ["a", "b"]
    assert taken.waited_s == [pytest.approx(0.05), pytest.approx(0.03)]


def test_hybrid_rule_whichever_first_and_caps_the_batch():
    b = Batcher(HybridRule(max_batch=2, max_wait_s=1.0).build())
    for i, name in enumerate("abc"):
        b.offer(BatchItem(name), i * 0.01)
    assert b.due_at() == 0.0
    assert names(b.take(0.02).batch) == ["a", "b"]
    assert b.due_at() == 0.02 + 1.0  # "c" alone waits for company
    assert names(b.take(1.02).batch) == ["c"]


def test_priorities_go_first_and_equal_priorities_keep_arrival_order():
    b = Batcher(HybridRule(max_batch=3, max_wait_s=0.0).build())
    b.offer(BatchItem("bulk1", priority=5), 0.0)
    b.offer(BatchItem("urgent1", priority=0), 0.1)
    b.offer(BatchItem("bulk2", priority=5), 0.2)
    b.offer(BatchItem("urgent2", priority=0), 0.3)
    assert names(b.take(0.3).batch) == ["urgent1", "urgent2", "bulk1"]
    assert names(b.take(0.3).batch) == ["bulk2"]


def test_items_count_toward_the_limit_and_an_oversize_request_goes_alone():
    b = Batcher(HybridRule(max_batch=8, max_wait_s=0.0).build())
    b.offer(BatchItem("five", items=5), 0.0)
    b.offer(BatchItem("four", items=4), 0.0)
    b.offer(BatchItem("huge", items=20), 0.0)
    assert (len(b), b.items) == (3, 29)  # requests, and the items they carry (what a backlog drains in)
    assert names(b.take(0.0).batch) == ["five"]
    assert (len(b), b.items) == (2, 24)
    assert names(b.take(0.0).batch) == ["four"]
    assert names(b.take(0.0).batch) == ["huge"]


def test_deadlines_pull_the_flush_forward_and_late_items_expire():
    b = Batcher(TimeRule(max_wait_s=1.0, max_batch=10).build())
    b.offer(BatchItem("patient"), 0.0)
    b.offer(BatchItem("hurried", deadline_s=0.3), 0.0)
    assert b.due_at() == 0.3
    b2 = Batcher(TimeRule(max_wait_s=1.0, max_batch=10).build())
    b2.offer(BatchItem("late", deadline_s=0.3), 0.0)
    b2.offer(BatchItem("fine"), 0.0)
    taken = b2.take(0.5)  # the timer fired late
    assert names(taken.expired) == ["late"]
    assert names(taken.batch) == []  # "fine" is not due until 1.0
    assert names(b2.take(1.0).batch) == ["fine"]


def test_a_full_queue_refuses():
    b = Batcher(SizeRule(max_batch=100).build(), capacity=2)
    assert b.offer(BatchItem(1), 0.0) and b.offer(BatchItem(2), 0.0)
    assert not b.offer(BatchItem(3), 0.0)
    assert len(b) == 2


def test_adaptive_rule_grows_additively_and_cuts_multiplicatively():
    rule = AdaptiveRule(min_batch=1, max_batch=16, target_latency_s=0.1, increase=2, decrease=0.5).build()
    assert rule.limit() == 1
    for _ in range(10):
        rule.observe(rule.limit(), 0.05)
    assert rule.limit() == 16
    rule.observe(16, 0.5)
    assert rule.limit() == 8
    rule.observe(3, 0.01)  # a part batch on target says nothing about a larger one
    assert rule.limit() == 8
    for _ in range(10):
        rule.observe(rule.limit(), 1.0)
    assert rule.limit() == 1


ops = st.lists(
    st.one_of(
        st.tuples(st.just("offer"), st.integers(0, 3), st.integers(1, 5), st.one_of(st.none(), st.floats(0, 5))),
        st.tuples(st.just("take"), st.floats(0, 0.5)),
    ),
    max_size=80,
)


@given(ops)
def test_every_accepted_item_leaves_exactly_once(operations):
    b = Batcher(HybridRule(max_batch=6, max_wait_s=0.2).build(), capacity=10)
    now = 0.0
    accepted, out = [], []
    for i, op in enumerate(operations):
        if op[0] == "offer":
            _, priority, items, deadline = op
            item = BatchItem(i, items=items, priority=priority, deadline_s=None if deadline is None else now + deadline)
            if b.offer(item, now):
                accepted.append(i)
        else:
            now += op[1]
            taken = b.take(now)
            assert sum(x.items for x in taken.batch) <= 6 or len(taken.batch) == 1
            out += names(taken.batch) + names(taken.expired)
        assert len(b) <= 10
    out += names(b.drain())
    assert sorted(out) == sorted(accepted)


def test_a_call_is_bounded_by_tokens_too_and_an_outsized_item_goes_alone():
    b = Batcher(HybridRule(max_batch=64, max_wait_s=0.0).build(), max_tokens=100)
    for name, tokens in [("a", 10), ("b", 10), ("huge", 5000), ("c", 10), ("d", 95), ("e", 10)]:
        b.offer(BatchItem(name, tokens=tokens), 0.0)
    calls = []
    while len(b):
        calls.append([item.payload for item in b.take(0.0).batch])
    assert calls == [["a", "b"], ["huge"], ["c"], ["d"], ["e"]]  # in order; nothing rides with "huge"


def test_the_pace_is_items_over_the_gaps_between_calls_that_end_at_full_stretch():
    pace = Pace(slots=2)
    assert math.isnan(pace.items_per_s())  # nothing measured, nothing to stand in
    assert pace.items_per_s(items_per_busy_s=30.0) == 60.0  # two calls as large and as long as the window's
    pace.ended(10, 1.0, running=2)  # the first end at full stretch starts the clock
    pace.ended(10, 1.1, running=2)
    assert pace.items_per_s() == pytest.approx(100.0)
    pace.ended(40, 1.3, running=2)  # gaps and items averaged apart: 0.11 s and 13 items
    assert pace.items_per_s() == pytest.approx(13.0 / 0.11)
    pace.ended(5, 5.0, running=1)  # a slot stood free: the lane was not at full stretch, nothing learnt
    pace.ended(5, 9.0, running=2)  # ... and the gap after it is no pace either
    assert pace.items_per_s() == pytest.approx(13.0 / 0.11)
    pace.ended(13, 9.11, running=2)
    assert pace.items_per_s() == pytest.approx(13.0 / 0.11)
