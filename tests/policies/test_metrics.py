import math

import pytest

from policies.control.metrics import LaneWindow
from policies.control.weights import Weights
from policies.pricing import CostModel
from tests.policies.helpers import feed, make_monitor, static_view


def test_rates_over_a_full_window():
    window = LaneWindow(now_s=0.0, window_s=10.0, slot_s=1.0)
    for i in range(300):  # 10 req/s for 30 s
        t = i / 10
        window.arrived(t)
        window.completed(t, 0.05, ok=i % 10 != 0)
    reading = window.read(30.0)
    assert 9.0 <= reading.span_s <= 10.0
    assert reading.window.arrivals / reading.span_s == pytest.approx(10.0, rel=0.12)
    assert reading.window.error_rate == pytest.approx(0.1, abs=0.02)
    assert reading.cumulative.completions == 300


def test_old_events_leave_the_window_and_idle_time_counts():
    window = LaneWindow(now_s=0.0, window_s=10.0, slot_s=1.0)
    for i in range(100):
        window.arrived(i / 10)
        window.completed(i / 10, 0.01)
    assert window.read(10.0).window.arrivals > 80
    later = window.read(100.0)  # a long idle gap
    assert later.window.arrivals == 0
    assert later.window.latency.count == 0
    assert later.span_s == pytest.approx(10.0, abs=1.0)
    assert later.cumulative.arrivals == 100


def test_young_window_spans_only_its_own_life():
    window = LaneWindow(now_s=100.0, window_s=60.0)
    window.arrived(101.0)
    assert window.read(103.0).span_s == pytest.approx(3.0)


def test_in_flight_and_queue_depth_are_gauges():
    window = LaneWindow(now_s=0.0)
    window.arrived(0.1)
    window.arrived(0.2)
    window.queue_depth = 7
    reading = window.read(0.3)
    assert (reading.in_flight, reading.queue_depth) == (2, 7)
    window.completed(0.4, 0.3)
    assert window.read(0.5).in_flight == 1


def test_window_figures_equal_cumulative_difference():
    window = LaneWindow(now_s=0.0, window_s=5.0, slot_s=1.0)
    for i in range(200):
        t = i * 0.05
        window.arrived(t)
        window.completed(t, 0.01 + (i % 7) * 0.01, items=2, input_tokens=10, output_tokens=3, cost_usd=0.001)
    reading = window.read(10.0)
    w = reading.window
    assert w.items == 2 * w.completions
    assert w.input_tokens == 10 * w.completions
    assert w.cost_usd == pytest.approx(0.001 * w.completions)
    assert w.latency.count == w.completions


def test_monitor_figures_rates_percentiles_and_nan_when_empty():
    monitor = make_monitor(window_s=10.0)
    feed(monitor, "realtime", 0.0, 20.0, 20.0, 0.05, error_every=20)
    snap = monitor.snapshot(20.0, static_view(Weights({"realtime": 1.0}, ("batch", "realtime"))))
    rt, batch = snap.lanes["realtime"], snap.lanes["batch"]
    assert rt.arrival_rate_per_s == pytest.approx(20.0, rel=0.1)
    assert rt.p95_s == pytest.approx(0.05, rel=0.02)
    assert rt.error_rate == pytest.approx(0.05, abs=0.01)
    assert snap.arrival_rate_per_s == pytest.approx(rt.arrival_rate_per_s + batch.arrival_rate_per_s)
    assert batch.completions == 0
    assert math.isnan(batch.p95_s) and math.isnan(batch.error_rate) and math.isnan(batch.cost_per_request_usd)
    assert snap.figures()["realtime.p95_s"] == rt.p95_s


def test_costs_token_prices_discount_and_provisioned_hours():
    monitor = make_monitor(
        window_s=10.0,
        realtime=CostModel(per_1k_input_tokens=0.002, per_1k_output_tokens=0.01),
        batch=CostModel(per_1k_input_tokens=0.002, per_1k_output_tokens=0.01, discount=0.5, per_hour=36.0),
    )
    feed(monitor, "realtime", 0.0, 10.0, 10.0, 0.1, input_tokens=1000, output_tokens=100)
    snap = monitor.snapshot(10.0, static_view(Weights({"realtime": 1.0}, ("batch", "realtime"))))
    rt, batch = snap.lanes["realtime"], snap.lanes["batch"]
    assert rt.cost_per_request_usd == pytest.approx(0.002 + 0.001)
    assert rt.estimated_cost_per_request_usd == pytest.approx(0.003)
    # batch: half the token price, plus $36/h = 1 cent/s amortised over ~10 req/s
    rate = snap.arrival_rate_per_s
    assert batch.estimated_cost_per_request_usd == pytest.approx(0.0015 + 0.5 * 0.01 / rate)
    # an idle provisioned lane still costs its hours over the window
    assert batch.cost_usd == pytest.approx(0.5 * 36.0 * batch.span_s / 3600)


def test_busy_billing_charges_only_busy_seconds():
    model = CostModel(per_hour=3600.0, billing="busy")
    assert model.request_cost_usd(busy_s=0.25) == pytest.approx(0.25)
    assert model.idle_cost_usd(100.0) == 0.0
