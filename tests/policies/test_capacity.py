"""The capacity rule (policies.control.capacity): replicas a lane needs, and the damped decision, with plain numbers."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from policies.control.capacity import AutoscaleParams, CapacityPlanner, needed_replicas
from policies.control.objectives import ObjectiveParams, Objectives
from policies.control.snapshot import BACKLOG_HORIZONS_S, JobsBacklog
from policies.control.weights import Weights
from policies.queueing import service_quantile_s, sojourn_quantile_s
from tests.policies.helpers import make_monitor, static_view

SWITCHABLE = Objectives({"switchable": ObjectiveParams(latency_s=2.0, percentile=99)})["switchable"]
LANES = ("batch", "realtime")


@given(st.floats(0.1, 200), st.floats(0.1, 200), st.floats(0.01, 1.0), st.integers(1, 16), st.floats(0, 0.5))
def test_more_arrivals_never_need_fewer_replicas(rate, more, service_s, concurrency, headroom):
    fewer = needed_replicas(rate, service_s, 1.0, concurrency, [SWITCHABLE], headroom, most=10_000)
    assert needed_replicas(rate + more, service_s, 1.0, concurrency, [SWITCHABLE], headroom, most=10_000) >= fewer


@given(st.floats(0.5, 100), st.floats(0.05, 1.0), st.integers(1, 8), st.floats(0, 0.5))
def test_the_replicas_needed_keep_the_objective_and_the_headroom_and_one_fewer_would_not(
    rate, service_s, concurrency, headroom
):
    assume(service_quantile_s(0.99, service_s, 1.0) < SWITCHABLE.latency_s)  # else no replica count keeps it
    n = needed_replicas(rate, service_s, 1.0, concurrency, [SWITCHABLE], headroom, most=10_000)
    servers = n * concurrency
    assert sojourn_quantile_s(0.99, rate, servers, service_s) <= SWITCHABLE.latency_s
    assert rate * service_s / servers <= 1 - headroom + 1e-9
    if n > 1:
        fewer = (n - 1) * concurrency
        kept = sojourn_quantile_s(0.99, rate, fewer, service_s) <= SWITCHABLE.latency_s
        assert not (kept and rate * service_s / fewer <= 1 - headroom)


def test_nothing_arriving_needs_nothing_and_an_impossible_load_asks_for_the_most():
    assert needed_replicas(0.0, 0.1, 1.0, 4, [SWITCHABLE], 0.2, most=8) == 0
    assert needed_replicas(1000.0, 1.0, 1.0, 1, [SWITCHABLE], 0.2, most=8) == 8


def test_autoscale_min_over_max_is_refused():
    with pytest.raises(ValueError, match="min"):
        AutoscaleParams(min=5, max=2)


class Lane:
    """One realtime lane fed a chosen load each second; the planner ticks once a second."""

    def __init__(self, **autoscale):
        self.monitor = make_monitor(window_s=30.0)
        self.params = AutoscaleParams(**autoscale)
        self.planner = CapacityPlanner({"realtime": self.params}, {"realtime": 4}, {"realtime": self.params.min})
        self.now = 0.0
        self.view = static_view(Weights({"realtime": 1.0}, LANES), "realtime")

    def run(self, seconds: int, rate_per_s: float, service_s: float = 0.1) -> list[int]:
        """Desired replicas after each second of `rate_per_s` arrivals served in `service_s`."""
        desired = []
        for _ in range(seconds):
            n = int(rate_per_s)
            window = self.monitor.lanes["realtime"]
            for i in range(n):
                t = self.now + i / max(n, 1)
                window.arrived(t)
                window.completed(t, service_s, busy_s=service_s)
                self.monitor.served(t, "switchable", "realtime", service_s, True)
            self.now += 1.0
            # Servers enough to answer the load fed (the rule asks what the lane needs, not what it has).
            ready = {"realtime": 20}
            decision = self.planner.on_tick(self.monitor.snapshot(self.now, self.view), ready)
            desired.append(decision["realtime"].desired)
        return desired


def test_a_rush_gets_its_replicas_after_the_up_hold_and_a_lull_lets_them_go_only_after_the_down_hold():
    lane = Lane(min=1, max=20, scale_up_hold="10s", scale_down_hold="60s", headroom=0.2)
    calm = lane.run(40, rate_per_s=20)  # 20/s x 0.1 s = 2 busy of 4 per replica
    assert calm[-1] == 1
    rush = lane.run(40, rate_per_s=200)  # 20 busy: at least 7 replicas of 4 at 80%
    first_up = next(i for i, n in enumerate(rush) if n > 1)
    assert first_up >= 9  # not before the rise has lasted the up hold (the window fills as it goes)
    assert rush[-1] >= math.ceil(200 * 0.1 / 0.8 / 4)
    peak = rush[-1]
    lull = lane.run(90, rate_per_s=20)
    first_down = next(i for i, n in enumerate(lull) if n < peak)
    assert first_down >= 59  # the fall must last the down hold
    assert lull[-1] < peak


def test_a_spike_shorter_than_the_up_hold_asks_for_nothing():
    lane = Lane(min=1, max=20, scale_up_hold="20s", scale_down_hold="60s")
    lane.run(40, rate_per_s=20)
    spike = lane.run(5, rate_per_s=400)
    assert spike == [1] * 5  # the window still remembers it afterwards: that is the window's memory, not a spike


def test_desired_stays_within_min_and_max_and_no_data_changes_nothing():
    lane = Lane(min=2, max=3, scale_up_hold="0s", scale_down_hold="0s")
    assert lane.run(3, rate_per_s=0) == [2, 2, 2]  # no arrivals: the floor
    assert lane.run(20, rate_per_s=1000)[-1] == 3  # the ceiling, whatever the load
    quiet = CapacityPlanner({"realtime": lane.params}, {"realtime": 4}, {"realtime": 3})
    empty = make_monitor()
    empty.lanes["realtime"].arrived(0.5)  # an arrival, no answer yet: no service time to go by
    decision = quiet.on_tick(empty.snapshot(1.0, lane.view), {"realtime": 3})["realtime"]
    assert decision.desired == 3 and "no measured service time" in decision.reason


def test_the_service_time_is_read_through_the_upstreams_own_queue():
    """40 answers a second from 4 servers, each call timed at 1 s (0.9 s of it waiting at the upstream): the
    service is 0.1 s, which Little's law gives; refusals hold no server and do not count."""
    from policies.control.capacity import service_time_s

    monitor = make_monitor(window_s=10.0)
    window = monitor.lanes["realtime"]
    for i in range(400):
        t = i / 40.0
        window.arrived(t)
        window.completed(t, 1.0, busy_s=1.0)
        window.arrived(t)
        window.completed(t, None, ok=False)  # a refusal
    figures = monitor.snapshot(10.0, static_view(Weights({"realtime": 1.0}, LANES))).lanes["realtime"]
    assert service_time_s(figures, servers=4) == pytest.approx(0.1, rel=0.02)
    assert service_time_s(figures, servers=400) == pytest.approx(1.0)  # not saturated: the time is the service


@given(st.lists(st.integers(0, 10_000), min_size=len(BACKLOG_HORIZONS_S), max_size=len(BACKLOG_HORIZONS_S)))
def test_a_backlog_drained_at_its_rate_meets_every_deadline_and_more_jobs_never_ask_for_less(increments):
    due = list(itertools.accumulate(increments))  # jobs due within a horizon include those due within a shorter one
    backlog = JobsBacklog(tuple(zip(BACKLOG_HORIZONS_S, due)))
    rate = backlog.drain_rate_per_s()
    assert all(rate * horizon_s >= n - 1e-6 for horizon_s, n in backlog.due_within)  # each horizon's jobs in time
    more = JobsBacklog(tuple((h, n + 1) for h, n in backlog.due_within))
    assert more.drain_rate_per_s() >= rate
    assert JobsBacklog().drain_rate_per_s() == 0.0


def test_jobs_waiting_with_deadlines_get_replicas_only_where_the_ready_ones_cannot_drain_them_in_time():
    """8 req/s of 0.1 s calls fit one replica of 4 at 80%. 3,000 jobs due within 5 minutes must go at 25/s
    (counted over the 2 minutes before): 3.3 busy servers, two replicas. The same jobs due within a day ask
    for 0.14/s, which the replica already up takes in its idle time."""
    lane = Lane(min=1, max=20, scale_up_hold="0s", scale_down_hold="0s", headroom=0.2)
    assert lane.run(20, rate_per_s=8)[-1] == 1
    soon = [(h, 3000 if h >= 300 else 0) for h in BACKLOG_HORIZONS_S]
    lane.monitor.backlogs["realtime"] = JobsBacklog(tuple(soon))
    grown = lane.run(1, rate_per_s=8)[-1]
    assert grown == 2 and "to meet the waiting jobs' deadlines" in lane.planner.last["realtime"].reason
    later = [(h, 3000 if h >= 86400 else 0) for h in BACKLOG_HORIZONS_S]
    lane.monitor.backlogs["realtime"] = JobsBacklog(tuple(later))
    assert lane.run(1, rate_per_s=8)[-1] == 1
