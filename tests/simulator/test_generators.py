"""Generated traces: rates, shapes and determinism, checked statistically with fixed seeds."""

from __future__ import annotations

import numpy as np
import pytest

from simulator.generators import Sizes, diurnal, on_off, poisson, step
from simulator.traces import TraceRequest


def rate_between(trace, start: float, end: float) -> float:
    return sum(1 for r in trace if start <= r.t_s < end) / (end - start)


def test_poisson_has_its_rate_and_exponential_gaps():
    trace = poisson(50.0, 200.0, np.random.default_rng(1))
    assert len(trace) == pytest.approx(10_000, rel=0.03)
    gaps = np.diff([r.t_s for r in trace])
    assert gaps.mean() == pytest.approx(1 / 50, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)  # exponential: coefficient of variation 1
    assert all(a.t_s <= b.t_s for a, b in zip(trace, trace[1:])) and trace[-1].t_s < 200


def test_the_same_seed_gives_the_same_trace():
    assert poisson(5, 60, np.random.default_rng(3)) == poisson(5, 60, np.random.default_rng(3))
    assert poisson(5, 60, np.random.default_rng(3)) != poisson(5, 60, np.random.default_rng(4))


def test_a_step_changes_the_rate_where_it_says():
    trace = step([(0.0, 10.0), (100.0, 100.0)], 200.0, np.random.default_rng(2))
    assert rate_between(trace, 0, 100) == pytest.approx(10, rel=0.1)
    assert rate_between(trace, 100, 200) == pytest.approx(100, rel=0.05)
    with pytest.raises(ValueError, match="start at 0"):
        step([(5.0, 1.0)], 10.0, np.random.default_rng(0))


def test_on_off_bursts_are_burstier_than_poisson_at_the_same_mean():
    rng = np.random.default_rng(7)
    bursty = on_off(100.0, 5.0, mean_on_s=5.0, mean_off_s=15.0, duration_s=2000.0, rng=rng)
    mean = len(bursty) / 2000.0
    assert mean == pytest.approx(0.25 * 100 + 0.75 * 5, rel=0.15)
    per_second = np.bincount([int(r.t_s) for r in bursty], minlength=2000)
    assert per_second.var() / per_second.mean() > 10  # Poisson's index of dispersion is 1


def test_diurnal_peaks_half_a_period_after_its_trough():
    trace = diurnal(20.0, 0.8, period_s=1000.0, duration_s=1000.0, rng=np.random.default_rng(5))
    trough, peak = rate_between(trace, 0, 50) + rate_between(trace, 950, 1000), rate_between(trace, 475, 525)
    assert peak == pytest.approx(20 * 1.8, rel=0.15) and trough / 2 == pytest.approx(20 * 0.2, rel=0.35)
    assert len(trace) / 1000 == pytest.approx(20, rel=0.05)


def test_sizes_resample_a_real_trace():
    real = [TraceRequest(0, 100, 10), TraceRequest(1, 300, 30)]
    trace = poisson(20, 50, np.random.default_rng(9), Sizes.like(real), route="/v1/chat/completions")
    assert {(r.input_tokens, r.output_tokens) for r in trace} == {(100, 10), (300, 30)}
    assert {r.route for r in trace} == {"/v1/chat/completions"}
