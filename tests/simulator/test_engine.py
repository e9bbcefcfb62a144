"""The discrete-event engine: queueing, admission, micro-batching, pins and determinism."""

import random

import numpy as np
import pytest

from configs import parse_config
from policies.queueing import erlang_c
from simulator import generators
from simulator.engine import Engine
from simulator.outcome import NO_LANE, SloTargets, summarize
from simulator.service import BatchApiLane, Latency, ServerLane, ServiceModel
from simulator.traces import TraceRequest, with_pinned_share

CONFIG = """
lanes:
  realtime:
    upstreams: ["http://127.0.0.1:1"]
    max_in_flight: {rt_slots}
    queue_depth: {rt_queue}
    queue_timeout: 5s
    spill: {rt_spill}
    cost: {{per_hour: 3.6, billing: busy}}
  batch:
    upstreams: ["http://127.0.0.1:2"]
    max_in_flight: 2
    {batching}
    cost: {{per_hour: 0.36, billing: busy}}
routes:
  - {{path: /v1/embeddings, protocol: openai-embeddings}}
  - {{path: /, protocol: http}}
modes:
  realtime: {{realtime: 1.0}}
  batch: {{batch: 1.0}}
initial_mode: {initial}
policy: {{type: static, params: {{mode: {initial}}}}}
"""


def config(rt_slots=4, rt_queue=100, rt_spill="false", batching="", initial="realtime"):
    return parse_config(
        CONFIG.format(rt_slots=rt_slots, rt_queue=rt_queue, rt_spill=rt_spill, batching=batching, initial=initial)
    )


def service(rt_servers=4, rt_s=0.1, batch=None, jitter=0.0):
    return ServiceModel(
        lanes={
            "realtime": ServerLane(concurrency=rt_servers, latency=Latency(base_s=rt_s, jitter=jitter)),
            "batch": batch or ServerLane(concurrency=2, latency=Latency(base_s=0.05, per_item_s=0.01)),
        }
    )


def at(*times, route="/", **kw):
    return [TraceRequest(t, 100, 10, route, **kw) for t in times]


def test_a_request_waits_for_a_free_server_fifo():
    out = Engine(config(rt_slots=8), service(rt_servers=1)).run(at(0.0, 0.0, 0.0))
    assert out.latency_s.tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert (out.status == 200).all()


def test_a_full_gate_refuses_a_pinned_request_and_binds_a_switchable_one_to_the_lane_with_room():
    refused = Engine(config(rt_slots=1, rt_queue=0), service()).run(at(0.0, 0.0, mode="realtime"))
    assert refused.status.tolist() == [200, 503]
    moved = Engine(config(rt_slots=1, rt_queue=0), service()).run(at(0.0, 0.0))
    assert moved.status.tolist() == [200, 200]
    assert [moved.lanes[i] for i in moved.lane] == ["realtime", "batch"]


def test_a_queued_request_that_outwaits_the_queue_timeout_is_refused():
    slow = service(rt_servers=1, rt_s=10.0)
    out = Engine(config(rt_slots=1, rt_queue=10), slow).run(at(0.0, 0.1))
    assert out.status.tolist() == [200, 503]
    assert out.latency_s[1] == pytest.approx(5.0)  # the queue_timeout


def test_micro_batching_merges_items_and_shares_the_call_cost():
    batching = "batching: {rule: hybrid, max_batch: 4, max_wait: 20ms}"
    cfg = config(batching=batching, initial="batch")
    out = Engine(cfg, service()).run(at(0.0, 0.001, 0.002, 0.003, 0.004, route="/v1/embeddings"))
    # The first four fill a batch at once: 50 ms + 4 x 10 ms; the fifth waits 20 ms for company.
    assert out.latency_s[:4] + out.arrival_s[:4] == pytest.approx([0.093] * 4)
    assert out.latency_s[4] == pytest.approx(0.02 + 0.06)
    call_usd = 0.36 * 0.09 / 3600
    assert out.cost_usd[:4].sum() == pytest.approx(call_usd)
    # The http route is not batchable: the same lane serves it one by one, two at a time.
    plain = Engine(cfg, service()).run(at(0.0, 0.0, 0.0))
    assert plain.latency_s.tolist() == pytest.approx([0.06, 0.06, 0.12])


def test_a_batch_api_lane_answers_after_its_turnaround_within_the_ceiling():
    api = BatchApiLane(  # max_wait 0: every request goes in a file of its own
        kind="batch_api", turnaround_median_s=600.0, turnaround_sigma=2.0, max_turnaround_s=3600.0, max_wait_s=0.0
    )
    trace = generators.poisson(5.0, 200.0, np.random.default_rng(1))
    out = Engine(config(initial="batch"), service(batch=api), seed=3).run(trace)
    assert (out.latency_s <= 3600.0 + 1e-9).all()
    assert 300 < np.median(out.latency_s) < 1200
    assert (out.latency_s == 3600.0).any()  # sigma 2 puts a share above the ceiling


def test_a_batch_api_lane_gathers_files_by_the_routers_rule_and_answers_each_file_after_one_turnaround():
    api = BatchApiLane(
        kind="batch_api",
        turnaround_median_s=600.0,
        turnaround_sigma=0.0,
        max_requests=50,
        max_bytes="1MB",
        max_wait="30s",
    )
    trace = at(*[i * 0.1 for i in range(1000)], *[1000.0 + i for i in range(3)])  # 10/s for 100 s, then 3 late ones
    out = Engine(config(initial="batch"), service(batch=api)).run(trace)
    assert out.files == {"batch": 21}  # 20 full files of 50 lines, then one that went 30 s after its first line
    waits = out.latency_s[:1000] - 600.0
    assert waits[0] == pytest.approx(4.9) and waits[49] == pytest.approx(0.0)  # the first waits for 49 more
    assert waits[50] == pytest.approx(4.9) and waits.max() == pytest.approx(4.9)
    assert out.latency_s[1000:].tolist() == pytest.approx([630.0, 629.0, 628.0])
    # A line is 200 bytes and 4 a token (100 input tokens here): 600 bytes, so 3 lines fill 2,000 bytes.
    small = api.model_copy(update={"max_bytes": 2000})
    assert Engine(config(initial="batch"), service(batch=small)).run(trace[:100]).files == {"batch": 34}


def test_pinned_requests_go_to_their_lane_whatever_the_weights():
    trace = with_pinned_share(at(*[i * 0.01 for i in range(200)]), 0.3, random.Random(1))
    out = Engine(config(initial="batch"), service()).run(trace)
    on = np.array([out.lanes[i] for i in out.lane])
    assert (on[out.pinned] == "realtime").all()
    assert (on[~out.pinned] == "batch").all()
    assert 40 < out.pinned.sum() < 80


def test_simulated_waits_match_erlang_c():
    # M/M/4 at 80% load: exponential service (a log-normal with scv 1 is close
    # enough for the mean wait) against the Erlang C mean wait C / (c mu - lambda).
    servers, mean_s, rate = 4, 0.1, 32.0
    sigma = np.sqrt(np.log(2.0))
    trace = generators.poisson(rate, 4000.0, np.random.default_rng(11))
    out = Engine(config(rt_slots=servers, rt_queue=100_000), service(servers, mean_s, jitter=sigma), seed=5).run(trace)
    waited = out.latency_s.mean() - mean_s
    expected = erlang_c(servers, rate * mean_s) / (servers / mean_s - rate)
    assert waited == pytest.approx(expected, rel=0.15)


def test_identical_inputs_give_identical_runs():
    trace = with_pinned_share(generators.poisson(40.0, 120.0, np.random.default_rng(2)), 0.2, random.Random(2))
    cfg = config(rt_slots=2, rt_queue=5, rt_spill="true")
    first, second = (Engine(cfg, service(jitter=0.3), seed=9).run(trace) for _ in range(2))
    assert first.latency_s.tolist() == second.latency_s.tolist()
    assert first.lane.tolist() == second.lane.tolist()
    other = Engine(cfg, service(jitter=0.3), seed=10).run(trace)
    assert other.latency_s.tolist() != first.latency_s.tolist()


def test_summary_counts_classes_and_costs():
    trace = at(0.0, 1.0, mode=None) + at(2.0, mode="realtime")
    out = Engine(config(), service()).run(trace)
    summary = summarize(out, SloTargets(pinned_s=0.05, switchable_s=1.0), "x")
    assert summary.total.requests == 3 and summary.total.errors == 0
    assert summary.total.slo_switchable == 1.0
    assert summary.total.slo_pinned == 0.0  # 100 ms against a 50 ms target
    assert summary.rows["batch"].requests == 0 and np.isnan(summary.rows["batch"].slo_pinned)
    assert summary.total.cost_usd == pytest.approx(3 * 3.6 * 0.1 / 3600)
    assert NO_LANE not in out.lane


def test_a_trace_route_no_route_takes_or_an_unknown_pin_is_an_error():
    with pytest.raises(ValueError, match="not a lane"):
        Engine(config(), service()).run(at(0.0, mode="gpu"))
    missing = ServiceModel(lanes={"realtime": ServerLane()})
    with pytest.raises(ValueError, match="no entry for lane"):
        Engine(config(), missing)


def test_the_hop_adds_to_what_the_client_sees_and_to_nothing_the_router_reads():
    trace = generators.poisson(30.0, 60.0, np.random.default_rng(2))
    plain = Engine(config(), service(jitter=0.3), seed=4).run(trace)
    hopped = Engine(config(), service(jitter=0.3).model_copy(update={"hop_s": 0.5}), seed=4).run(trace)
    np.testing.assert_allclose(hopped.latency_s - plain.latency_s, 0.5)
    np.testing.assert_array_equal(hopped.cost_usd, plain.cost_usd)  # busy time excludes it
    assert [row.p95_s for row in hopped.timeline] == [row.p95_s for row in plain.timeline]
    assert any(p > 0 for row in plain.timeline for p in row.p95_s if p == p)


def test_a_rush_never_moves_live_requests_to_a_provider_batch_lane():
    """A provider batch lane takes jobs only, in the router: no live request is drawn to it, waits on it or
    fails over to it. A rush the real-time and flex lanes cannot carry is refused there, not sent to a batch
    that answers hours later (the simulator used to move 810 of 3,000 there)."""
    from configs import load_config
    from simulator.service import load_service_model
    from simulator.traces import prepared

    config = load_config("configs/provider.yaml")
    service = load_service_model("configs/provider.service.yaml")
    trace = prepared("bundled", speed=300.0, route="/v1/chat/completions")
    outcome = Engine(config, service, seed=0).run(trace)
    batch = outcome.lanes.index("batch")
    assert config.lanes["batch"].batch_api is not None
    assert not (outcome.lane == batch).any()
    assert (outcome.status == 503).sum() > 100  # the rush was more than the live lanes carry: refused at once
