"""Lanes that fail, simulated: outages, errors and timeouts, and the router's answers to them.

The router's rules are the ones played (policies.path.upstream_pool,
policies.path.retry_budget, policies.path.lane_choice); these tests check that the
simulator applies them where the router does: a refused connection ejects
its replica and moves on within the retry budget, an ejected lane is left
out of the draw, a pinned request has nowhere else to go, an error is
relayed and counted against its replica, a slow call is a 504 at the lane's
timeout while its server stays busy.
"""

import pytest

from configs import parse_config
from simulator.engine import Engine
from simulator.failure_path import REFUSED, TIMED_OUT
from simulator.service import Failures, Latency, Outage, ServerLane, ServiceModel
from simulator.traces import TraceRequest

CONFIG = """
lanes:
  realtime:
    upstreams: ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    max_in_flight: 64
    timeout: {timeout}
    outlier: {{consecutive_errors: 3, base_ejection: 5s, max_ejected_fraction: 1.0}}
  batch:
    upstreams: ["http://127.0.0.1:3"]
    max_in_flight: 64
routes:
  - {{path: /, protocol: http}}
modes:
  realtime: {{realtime: 1.0}}
  batch: {{batch: 1.0}}
initial_mode: realtime
policy: {{type: static, params: {{mode: realtime}}}}
"""


def simulate(template: str, lanes: dict[str, ServerLane], trace, *, timeout: str, seed: int):
    """`trace` through the config `template` (with the lanes' `timeout`) and the lanes' service model."""
    return Engine(parse_config(template.format(timeout=timeout)), ServiceModel(lanes=lanes), seed=seed).run(trace)


def run(failures: Failures, trace, *, timeout="30s", base_s=0.05, seed=0):
    lanes = {
        "realtime": ServerLane(replicas=2, concurrency=8, latency=Latency(base_s=base_s), failures=failures),
        "batch": ServerLane(concurrency=8, latency=Latency(base_s=0.2)),
    }
    return simulate(CONFIG, lanes, trace, timeout=timeout, seed=seed)


def every(step_s: float, until_s: float, **kw) -> list[TraceRequest]:
    return [TraceRequest(k * step_s, 10, 0, **kw) for k in range(int(until_s / step_s))]


def lanes_of(outcome) -> list[str]:
    return [outcome.lanes[k] for k in outcome.lane]


def test_an_outage_of_every_replica_fails_over_to_the_next_lane_and_ends_when_the_replicas_are_back():
    trace = every(0.5, 30.0)
    outcome = run(Failures(down=[Outage(**{"from": 10.0, "to": 20.0})]), trace)
    during = [k for k, r in enumerate(trace) if 10.0 <= r.t_s < 20.0]
    before = [k for k, r in enumerate(trace) if r.t_s < 10.0]
    after = [k for k, r in enumerate(trace) if r.t_s >= 26.0]  # the ejection (5 s, then 10 s) has run out
    assert all(outcome.status[k] == 200 for k in range(len(trace)))  # nothing lost: all failed over
    assert {lanes_of(outcome)[k] for k in before} == {"realtime"}
    assert {lanes_of(outcome)[k] for k in during} == {"batch"}
    assert {lanes_of(outcome)[k] for k in after} == {"realtime"}


def test_a_pinned_request_has_no_other_lane_and_is_a_502_while_its_lane_is_down():
    trace = every(1.0, 20.0, mode="realtime")
    outcome = run(Failures(down=[Outage(**{"from": 5.0, "to": 10.0})]), trace)
    statuses = {int(outcome.status[k]) for k, r in enumerate(trace) if 5.0 <= r.t_s < 10.0}
    assert statuses == {REFUSED}
    assert all(outcome.status[k] == 200 for k, r in enumerate(trace) if r.t_s < 5.0)


def test_one_replica_down_is_ejected_and_its_calls_go_to_the_other_replica_without_failing():
    trace = every(0.25, 20.0)
    outcome = run(Failures(down=[Outage(**{"from": 0.0, "to": 20.0, "replicas": 1})]), trace)
    assert all(outcome.status == 200)
    assert set(lanes_of(outcome)) == {"realtime"}  # retried on the replica that is up, in the same lane


def test_errors_are_relayed_at_their_rate_and_counted_against_the_replicas():
    trace = every(0.05, 200.0)
    outcome = run(Failures(error_rate=0.1), trace)
    errors = (outcome.status == 500).mean()
    assert errors == pytest.approx(0.1, abs=0.02)
    assert set(lanes_of(outcome)) == {"realtime"}  # a 500 is an answer: not retried, not failed over


def test_a_call_longer_than_the_lane_timeout_is_a_504_at_the_timeout():
    trace = every(1.0, 5.0)
    outcome = run(Failures(), trace, timeout="300ms", base_s=1.0)
    assert list(outcome.status) == [TIMED_OUT] * len(trace)
    assert outcome.latency_s == pytest.approx([0.3] * len(trace))


def test_a_failing_run_is_a_pure_function_of_its_inputs():
    trace = every(0.1, 60.0)
    failures = Failures(error_rate=0.2, down=[Outage(**{"from": 20.0, "to": 30.0, "replicas": 1})])
    first, second = run(failures, trace, seed=4), run(failures, trace, seed=4)
    assert list(first.status) == list(second.status) and list(first.lane) == list(second.lane)
    assert first.decisions == second.decisions


BATCHING = """
lanes:
  realtime:
    upstreams: ["http://127.0.0.1:1"]
    max_in_flight: 64
  batch:
    upstreams: ["http://127.0.0.1:2", "http://127.0.0.1:3"]
    max_in_flight: 4
    timeout: {timeout}
    batching: {{rule: hybrid, max_batch: 8, max_wait: 20ms}}
    outlier: {{consecutive_errors: 3, base_ejection: 5s, max_ejected_fraction: 1.0}}
routes:
  - {{path: /v1/embeddings, protocol: openai-embeddings}}
  - {{path: /, protocol: http}}
modes:
  realtime: {{realtime: 1.0}}
  batch: {{batch: 1.0}}
initial_mode: batch
policy: {{type: static, params: {{mode: batch}}}}
"""


def run_batched(failures: Failures, trace, *, timeout="30s", batch_s=0.05, seed=0):
    lanes = {
        "realtime": ServerLane(concurrency=8, latency=Latency(base_s=0.02)),
        "batch": ServerLane(replicas=2, concurrency=4, latency=Latency(base_s=batch_s), failures=failures),
    }
    return simulate(BATCHING, lanes, trace, timeout=timeout, seed=seed)


def texts(step_s: float, until_s: float) -> list[TraceRequest]:
    return [TraceRequest(k * step_s, 10, 0, "/v1/embeddings") for k in range(int(until_s / step_s))]


def test_a_merged_call_no_replica_takes_sends_each_request_to_the_next_lane():
    trace = texts(0.01, 30.0)
    outcome = run_batched(Failures(down=[Outage(**{"from": 10.0, "to": 20.0})]), trace)
    assert all(outcome.status == 200)  # nothing lost
    during = {lanes_of(outcome)[k] for k, r in enumerate(trace) if 10.5 <= r.t_s < 19.5}
    assert during == {"realtime"}
    assert {lanes_of(outcome)[k] for k, r in enumerate(trace) if r.t_s < 9.5} == {"batch"}


def test_erring_merged_calls_are_bisected_so_only_some_requests_get_500s_and_errors_eject_the_lane():
    trace = texts(0.01, 60.0)
    outcome = run_batched(Failures(error_rate=0.2), trace)
    on_batch = outcome.lane == outcome.lanes.index("batch")
    erred = outcome.status == 500
    assert erred.any() and not (erred & ~on_batch).any()  # only the failing lane errs; a 500 is relayed as is
    assert 0.1 < erred[on_batch].mean() < 0.35
    assert (~on_batch).any()  # three errors in a row on each replica: the lane left the draw for a while
    assert all(outcome.status[~on_batch] == 200)


def test_a_bisected_batch_holds_its_slot_until_its_last_call_and_each_answer_carries_every_call_it_rode_in():
    # Every call errs: 8 texts go as 8, then 4 + 4, then 2 + 2 + 2 + 2, then one by one, each answered 500.
    config = parse_config(
        BATCHING.format(timeout="30s")
        .replace("max_in_flight: 4", "max_in_flight: 1")
        .replace("batching: {rule", "cost: {per_hour: 3.6, billing: busy}\n    batching: {rule")
    )
    service = ServiceModel(
        lanes={
            "realtime": ServerLane(concurrency=8, latency=Latency(base_s=0.02)),
            "batch": ServerLane(
                replicas=2,
                concurrency=64,
                latency=Latency(base_s=0.1, per_item_s=0.01),
                failures=Failures(error_rate=1.0),
            ),
        }
    )
    trace = [TraceRequest(0.0, 10, 0, "/v1/embeddings") for _ in range(8)] + [
        TraceRequest(0.01, 10, 0, "/v1/embeddings")
    ]
    outcome = Engine(config, service, seed=0).run(trace)
    first, late = slice(0, 8), 8
    assert all(outcome.status[first] == 500)
    calls_s = [0.1 + 0.01 * n for n in (8, 4, 2, 1)]  # the calls each of the 8 rode in, one after the other
    assert outcome.latency_s[first] == pytest.approx([sum(calls_s)] * 8, abs=1e-6)
    shares = [c / n for c, n in zip(calls_s, (8, 4, 2, 1))]  # busy seconds by share, at $0.001 a second
    assert outcome.cost_usd[first] == pytest.approx([0.001 * sum(shares)] * 8)
    # The one slot was held until the last half answered: the request after them waited for it.
    assert outcome.latency_s[late] >= sum(calls_s) - 0.01


def test_a_merged_call_longer_than_the_timeout_is_a_504_for_every_request_in_it():
    trace = texts(0.5, 10.0)
    outcome = run_batched(Failures(), trace, timeout="100ms", batch_s=1.0)
    on_batch = outcome.lane == outcome.lanes.index("batch")
    assert on_batch[:3].all() and all(outcome.status[on_batch] == TIMED_OUT)
    assert outcome.latency_s[on_batch] == pytest.approx([0.1 + 0.02] * on_batch.sum(), abs=0.021)  # wait + timeout
    assert all(outcome.status[~on_batch] == 200)  # once both replicas are ejected, the other lane serves
