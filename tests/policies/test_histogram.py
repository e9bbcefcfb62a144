import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.histogram import MIN_VALUE, RELATIVE_ACCURACY, Histogram, bucket_index, bucket_value

latencies = st.lists(st.floats(min_value=1e-5, max_value=1e4, allow_nan=False), min_size=1, max_size=400)
quantile = st.floats(min_value=0.0, max_value=1.0)


@given(latencies, quantile)
def test_quantile_within_relative_accuracy_of_numpy(values, q):
    estimate = Histogram.of(values).quantile(q)
    exact = float(np.quantile(np.array(values), q, method="lower"))
    assert abs(estimate - exact) <= RELATIVE_ACCURACY * exact * (1 + 1e-9)


@settings(max_examples=30)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_p50_p95_p99_on_lognormal_samples_within_two_percent(seed):
    values = np.random.default_rng(seed).lognormal(mean=-3.0, sigma=1.0, size=5000)
    hist = Histogram.of(values.tolist())
    estimates = hist.quantiles((0.5, 0.95, 0.99))
    for q, estimate in zip((0.5, 0.95, 0.99), estimates):
        exact = float(np.quantile(values, q, method="lower"))
        assert abs(estimate - exact) / exact <= 0.02


@given(latencies, latencies)
def test_merge_equals_histogram_of_all_values(a, b):
    merged = Histogram.of(a)
    merged.merge(Histogram.of(b))
    assert merged == Histogram.of(a + b)
    assert merged.count == len(a) + len(b)


@given(latencies, latencies)
def test_minus_recovers_what_came_after_a_copy(before, after):
    hist = Histogram.of(before)
    earlier = hist.copy()
    for value in after:
        hist.record(value)
    assert hist.minus(earlier) == Histogram.of(after)


def test_minus_refuses_a_histogram_that_is_not_earlier():
    with pytest.raises(ValueError):
        Histogram.of([0.1]).minus(Histogram.of([0.1, 0.2]))


def test_empty_histogram_has_nan_quantiles_and_mean():
    hist = Histogram()
    assert all(math.isnan(x) for x in hist.quantiles((0.5, 0.99)))
    assert math.isnan(hist.mean())


def test_zero_and_tiny_values_share_the_floor_bucket():
    hist = Histogram.of([0.0, -1.0, MIN_VALUE / 10])
    assert hist.quantile(1.0) == MIN_VALUE
    assert bucket_index(0.0) == bucket_index(MIN_VALUE)


@given(st.floats(min_value=2e-6, max_value=1e6))
def test_bucket_value_is_within_accuracy_of_every_member(value):
    represented = bucket_value(bucket_index(value))
    assert abs(represented - value) <= RELATIVE_ACCURACY * value * (1 + 1e-9)


def test_mean_is_exact_not_bucketed():
    assert Histogram.of([0.1, 0.2, 0.3]).mean() == pytest.approx(0.2, rel=1e-12)


@given(st.lists(st.floats(1e-4, 100.0), min_size=1, max_size=300))
def test_counts_at_most_a_bound_are_exact_but_for_the_bound_bucket(values):
    hist = Histogram.of(values)
    bounds = (0.001, 0.01, 0.1, 1.0, 10.0)
    counted = hist.counts_at_most(bounds)
    for bound, n in zip(bounds, counted):
        assert sum(v <= bound for v in values) <= n <= sum(v <= bound * 1.03 for v in values)
    assert counted == sorted(counted) and hist.sum == pytest.approx(sum(values))
