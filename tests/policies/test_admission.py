"""The admission rules, sans-I/O: the gate's priority queue with aging, and where a request may wait."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.path.admission import Gate, Outlook, Placed, Refused, retry_after_s
from policies.path.admission import place as place_lazily


def test_slots_then_a_bounded_queue():
    gate = Gate(slots=2, depth=1)
    assert gate.try_enter() and gate.try_enter() and not gate.try_enter()
    assert gate.enqueue("a", 1, 0.0) is not None
    assert gate.enqueue("b", 1, 0.0) is None  # no room
    assert gate.release(1.0).ticket == "a"  # the slot passes: in_flight stays
    assert gate.in_flight == 2 and gate.waiting == 0
    assert gate.release(1.0) is None and gate.release(1.0) is None
    assert gate.idle


def test_pinned_before_switchable_before_sheddable_then_first_come():
    gate = Gate(slots=1, depth=10)
    gate.try_enter()
    for ticket, priority in (("shed", 2), ("s1", 1), ("p1", 0), ("s2", 1), ("p2", 0)):
        gate.enqueue(ticket, priority, 0.0)
    assert [gate.release(0.0).ticket for _ in range(5)] == ["p1", "p2", "s1", "s2", "shed"]


def test_aging_lets_a_long_waiter_pass_a_fresh_urgent_one():
    gate = Gate(slots=1, depth=10, aging_s=2.0)
    gate.try_enter()
    gate.enqueue("old switchable", 1, 0.0)
    gate.enqueue("new pinned", 0, 2.5)
    assert gate.release(2.5).ticket == "old switchable"  # 1 - 2.5/2 < 0


def test_a_withdrawn_waiter_is_skipped_and_counted_out():
    gate = Gate(slots=1, depth=10)
    gate.try_enter()
    gone = gate.enqueue("gone", 0, 0.0)
    gate.enqueue("stays", 1, 0.0)
    assert gate.withdraw(gone) and not gate.withdraw(gone)
    assert gate.waiting == 1
    assert gate.release(0.0).ticket == "stays"


def test_predicted_wait_counts_those_ahead_over_the_slots():
    gate = Gate(slots=4, depth=100)
    assert gate.wait_s(1, 0.2) == 0.0  # a free slot
    for _ in range(4):
        gate.try_enter()
    for i in range(8):
        gate.enqueue(i, 1 if i < 6 else 2, 0.0)
    assert gate.wait_s(0, 0.2) == pytest.approx(0.05)  # nobody ahead of a pinned request
    assert gate.wait_s(1, 0.2) == pytest.approx(7 * 0.2 / 4)
    assert gate.drain_s(0.2) == pytest.approx(9 * 0.2 / 4)
    # Pinned traffic arriving at 10/s keeps overtaking: slots free up for a switchable one at 20 - 10 per s.
    assert gate.wait_s(1, 0.2, overtaking_per_s=10.0) == pytest.approx(7 / 10.0)
    assert gate.wait_s(1, 0.2, overtaking_per_s=25.0) == math.inf


def test_the_more_urgent_classes_overtaking_a_waiter_are_counted_as_they_join_the_queue_now():
    """At the start of a rush the metrics window still holds the calm: the gate's own count of who joins its
    queue says how fast pinned requests pass a switchable one now."""
    from policies.path.admission import outlook as lane_outlook
    from tests.policies.helpers import MODES, feed, make_monitor, static_view

    gate = Gate(slots=1, depth=1000)
    gate.try_enter()
    assert math.isnan(gate.joining_per_s(1))
    for k in range(11):  # pinned (0) joining every 50 ms, switchable (1) every 10 ms
        gate.enqueue(("pinned", k), 0, 1.0 + 0.05 * k)
    for k in range(51):
        gate.enqueue(("switchable", k), 1, 1.0 + 0.01 * k)
    assert gate.joining_per_s(1) == pytest.approx(20.0)  # only the more urgent class overtakes
    assert gate.joining_per_s(0) != gate.joining_per_s(0)  # nobody is more urgent than pinned: NaN
    gate.release(2.5)  # a second after the last pinned one joined: the class slowed down, or stopped
    assert gate.joining_per_s(1) == pytest.approx(1.0)
    # An outlook takes the gate's count over the window's, where pinned requests were served at 5 a second
    monitor = make_monitor()
    feed(monitor, "realtime", 0.0, 2.5, 10.0, 0.1)  # slots free up at 1 / 0.1 s
    for k in range(12):
        monitor.served(0.2 * k, "pinned", "realtime", 0.1, True)
    snapshot = monitor.snapshot(2.5, static_view(MODES["realtime"]))
    seen = lane_outlook("realtime", snapshot, gate=gate, priority=1, queue_timeout_s=30.0, spill=False)
    ahead = gate.waiting + 1
    assert seen.wait_s == pytest.approx(ahead / (10.0 - 1.0))  # not ahead / (10 - 5)


@given(st.lists(st.tuples(st.sampled_from(["enter", "queue", "release", "withdraw"]), st.integers(0, 2)), max_size=60))
def test_slots_and_waiters_are_always_accounted_for(ops):
    gate = Gate(slots=2, depth=3, aging_s=1.0)
    holders, queued = 0, []
    for t, (op, priority) in enumerate(ops):
        if op == "enter" and gate.try_enter():
            holders += 1
        elif op == "queue" and not gate.free and (w := gate.enqueue(t, priority, float(t))) is not None:
            queued.append(w)
        elif op == "release" and holders:
            passed = gate.release(float(t))
            if passed is None:
                holders -= 1
            else:
                queued.remove(passed)
        elif op == "withdraw" and queued:
            assert gate.withdraw(queued.pop(0))
        assert gate.in_flight == holders <= gate.slots
        assert gate.waiting == len(queued) <= gate.depth
        assert not (queued and gate.in_flight < gate.slots)  # nobody waits beside a free slot


def place(drawn, outlooks, **kw):
    return place_lazily(drawn, list(outlooks), outlooks.__getitem__, **kw)


def outlook(lane, *, free=False, room=True, wait_s=0.0, service_s=0.1, cost=1.0, spill=False, timeout_s=5.0):
    return Outlook(lane, free, room, wait_s, service_s, timeout_s, cost, spill, drain_s=wait_s + service_s)


def test_a_request_stays_on_its_lane_while_that_meets_its_objective():
    lanes = {"realtime": outlook("realtime", wait_s=1.5), "batch": outlook("batch", free=True, cost=0.5)}
    assert place("realtime", lanes, movable=True, latency_s=2.0) == Placed("realtime", "drawn")


def test_a_switchable_request_predicted_to_miss_goes_to_the_cheapest_lane_that_meets_it():
    lanes = {
        "realtime": outlook("realtime", wait_s=3.0),
        "spot": outlook("spot", wait_s=0.5, cost=0.2),
        "batch": outlook("batch", wait_s=0.2, cost=0.5),
        "slow": outlook("slow", wait_s=9.0, cost=0.1),
    }
    assert place("realtime", lanes, movable=True, latency_s=2.0) == Placed("spot", "moved")


def test_nobody_can_serve_in_time_refused_at_once_with_the_drain_time():
    lanes = {"realtime": outlook("realtime", wait_s=3.0), "batch": outlook("batch", wait_s=4.0)}
    refused = place("realtime", lanes, movable=True, latency_s=2.0)
    assert refused == Refused("realtime", "predicted_miss", 3.0, 4)
    full = {"realtime": outlook("realtime", room=False, wait_s=3.0), "batch": outlook("batch", room=False)}
    assert place("realtime", full, movable=True, latency_s=math.inf).kind == "lane_full"


def test_a_pinned_request_never_moves():
    lanes = {"realtime": outlook("realtime", wait_s=3.0), "batch": outlook("batch", free=True)}
    assert isinstance(place("realtime", lanes, movable=False, latency_s=1.0), Refused)


def test_spill_queues_on_another_lane_when_none_meets_the_objective():
    lanes = {"batch": outlook("batch", room=False, spill=True), "realtime": outlook("realtime", wait_s=4.0)}
    assert place("batch", lanes, movable=True, latency_s=2.0) == Placed("realtime", "spilled")
    assert isinstance(place("batch", lanes, movable=True, latency_s=2.0, visited=["realtime"]), Refused)


def test_no_measurement_is_not_too_slow_and_a_wait_past_the_timeout_is():
    unknown = {"realtime": outlook("realtime", wait_s=math.nan, service_s=math.nan)}
    assert place("realtime", unknown, movable=True, latency_s=0.1) == Placed("realtime", "drawn")
    doomed = {"realtime": outlook("realtime", wait_s=6.0, timeout_s=5.0)}
    assert place("realtime", doomed, movable=True, latency_s=math.inf).kind == "predicted_miss"


def test_retry_after_is_whole_seconds_at_least_one():
    assert [retry_after_s(x) for x in (math.nan, 0.2, 1.0, 1.01, 7.5)] == [1, 1, 1, 2, 8]


def test_the_rate_slots_free_up_is_measured_while_the_gate_is_full():
    gate = Gate(slots=2, depth=100)
    gate.try_enter(), gate.try_enter()
    for i in range(40):
        gate.enqueue(i, 1, 0.0)
    assert gate.freed_per_s(0.1) == pytest.approx(20.0)  # nothing measured: slots over the service time
    for k in range(1, 30):
        gate.release(0.5 * k)  # the upstream slowed down: a slot every 0.5 s
    assert gate.freed_per_s(0.1) == pytest.approx(2.0)
    assert gate.wait_s(1, 0.1) == pytest.approx((gate.ahead(1) + 1) / 2.0)


def test_a_free_but_slow_lane_gives_way_to_one_that_meets_and_is_kept_when_none_does():
    slow = outlook("realtime", free=True, service_s=3.0)
    assert place(
        "realtime", {"realtime": slow, "batch": outlook("batch", wait_s=0.5)}, movable=True, latency_s=2.0
    ) == (Placed("batch", "moved"))
    assert place(
        "realtime", {"realtime": slow, "batch": outlook("batch", wait_s=5.0)}, movable=True, latency_s=2.0
    ) == (Placed("realtime", "drawn"))


def test_meeting_an_objective_keeps_headroom_for_the_scatter_around_a_prediction():
    lanes = {"realtime": outlook("realtime", wait_s=1.55, service_s=0.1)}  # 1.65 s predicted, 1.6 s allowed
    assert place("realtime", lanes, movable=False, latency_s=2.0).kind == "predicted_miss"


def test_a_micro_batched_request_expects_the_queue_ahead_over_the_lane_s_items_per_second():
    from policies.path.admission import batched_latency_s
    from tests.policies.helpers import MODES, feed, make_monitor, static_view

    monitor = make_monitor()
    assert math.isnan(batched_latency_s(monitor.snapshot(1.0, static_view(MODES["batch"])), "batch", 0, True))
    feed(monitor, "batch", 0.0, 10.0, 20.0, 0.1)
    snapshot = monitor.snapshot(10.0, static_view(MODES["batch"]))
    assert batched_latency_s(snapshot, "batch", 0, True) == pytest.approx(0.1, rel=0.02)  # the lane's own time
    rate = snapshot.lanes["batch"].items_per_s
    assert batched_latency_s(snapshot, "batch", 99, True) == pytest.approx(100 / rate)  # a backlog of about 5 s
    # With a merged-call slot free, what waits is a batch gathering company, not a backlog.
    assert batched_latency_s(snapshot, "batch", 99, False) == pytest.approx(0.1, rel=0.02)
    refused = place("batch", {"batch": outlook_of_batch(snapshot, 99)}, movable=True, latency_s=2.0)
    assert refused.kind == "predicted_miss" and refused.retry_after_s == math.ceil(100 / rate)


def outlook_of_batch(snapshot, waiting, pace=None):
    from policies.path.admission import outlook as lane_outlook

    return lane_outlook(
        "batch",
        snapshot,
        gate=None,
        priority=1,
        queue_timeout_s=5.0,
        spill=False,
        batch_room=True,
        batch_waiting=waiting,
        batch_saturated=True,
        batch_pace=pace,
    )


def test_a_full_queue_sheds_its_newest_least_urgent_waiter_for_a_more_urgent_one():
    gate = Gate(slots=1, depth=3)
    gate.try_enter()
    gate.enqueue("switch-1", 1, 0.0)
    gate.enqueue("shed-1", 2, 0.0)
    gate.enqueue("shed-2", 2, 0.1)
    assert not gate.room and gate.room_for(0) and gate.room_for(1) and not gate.room_for(2)
    assert gate.make_room(2) is None  # nobody less urgent than a sheddable one
    assert gate.make_room(0).ticket == "shed-2"
    assert gate.enqueue("pinned", 0, 0.2) is not None and gate.waiting == 3
    assert [gate.release(1.0).ticket for _ in range(3)] == ["pinned", "switch-1", "shed-1"]


def test_spill_goes_only_where_the_queue_timeout_would_not_end_the_wait():
    lanes = {
        "batch": outlook("batch", room=False, spill=True),
        "realtime": outlook("realtime", wait_s=6.0, timeout_s=5.0),
    }
    assert place("batch", lanes, movable=True, latency_s=2.0) == Refused("batch", "lane_full", 0.0, 1)


def test_a_backlog_behind_a_lane_that_just_began_is_judged_by_its_pace_not_by_its_half_idle_window():
    """A lane busy for one second of a ten-second window shows a tenth of its pace in items per second:
    judged by that, a short backlog looks like seconds, and requests the lane serves at once are refused."""
    from policies.path.batching import Pace
    from tests.policies.helpers import MODES, make_monitor, static_view

    monitor = make_monitor()
    window = monitor.lanes["batch"]
    window.arrived(0.0)
    window.completed(0.0, 0.05, busy_s=0.05)  # one early call, then nothing for nine seconds
    for k in range(100):  # the last second: 100 items, calls of 10 items taking 0.2 s, four at a time
        window.arrived(9.0 + k / 100)
        window.completed(9.0 + k / 100, 0.2, busy_s=0.02)
    snapshot = monitor.snapshot(10.0, static_view(MODES["batch"]))
    assert snapshot.lanes["batch"].items_per_s < 12  # 100 items over the window's nine seconds
    pace = Pace(slots=4)
    by_window = place("batch", {"batch": outlook_of_batch(snapshot, 30)}, movable=True, latency_s=2.0)
    assert by_window.kind == "predicted_miss"  # 31 items at 11 a second: 2.8 s
    assert place("batch", {"batch": outlook_of_batch(snapshot, 30, pace)}, movable=True, latency_s=2.0) == Placed(
        "batch", "drawn"
    )  # before the pace is measured: four calls of the window's size and time, about 200 items a second
    for k in range(6):  # measured: a call of 10 items ends every 0.05 s at full stretch
        pace.ended(10, 9.5 + 0.05 * k, running=4)
    assert pace.items_per_s() == pytest.approx(200.0)
    assert place("batch", {"batch": outlook_of_batch(snapshot, 30, pace)}, movable=True, latency_s=2.0) == Placed(
        "batch", "drawn"
    )
    assert place("batch", {"batch": outlook_of_batch(snapshot, 400, pace)}, movable=True, latency_s=2.0).kind == (
        "predicted_miss"  # 401 items at 200 a second: 2 s, over the 1.6 s allowed
    )
