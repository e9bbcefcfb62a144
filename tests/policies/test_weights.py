import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.control.weights import SUM_TOLERANCE, Weights

LANES = ("a", "b", "c")


@st.composite
def weights(draw):
    raw = [draw(st.floats(min_value=0, max_value=1)) for _ in LANES]
    if sum(raw) == 0:
        raw[0] = 1.0
    total = sum(raw)
    values = [x / total for x in raw]
    values[-1] = max(0.0, 1.0 - sum(values[:-1]))
    return Weights(dict(zip(LANES, values)), LANES)


@given(weights(), weights(), st.floats(min_value=0, max_value=1))
def test_toward_stays_in_the_simplex(start, target, fraction):
    mixed = start.toward(target, fraction)
    assert all(0.0 <= w <= 1.0 for w in mixed.values())
    assert abs(sum(mixed.values()) - 1.0) <= SUM_TOLERANCE


@given(weights(), weights(), st.lists(st.floats(min_value=0, max_value=1), min_size=2, max_size=6))
def test_ramp_is_monotone_per_lane(start, target, fractions):
    ramp = [start.toward(target, f) for f in sorted(fractions)]
    for lane in LANES:
        series = [w[lane] for w in ramp]
        if target[lane] >= start[lane]:
            assert all(x <= y + 1e-12 for x, y in zip(series, series[1:]))
        else:
            assert all(x >= y - 1e-12 for x, y in zip(series, series[1:]))


def test_full_fraction_is_exactly_the_target():
    start = Weights({"a": 1.0}, LANES)
    target = Weights({"b": 0.3, "c": 0.7}, LANES)
    assert start.toward(target, 1.0) is target
    assert start.toward(target, 0.0) is start


def test_invalid_weights_are_refused():
    with pytest.raises(ValueError, match="sum"):
        Weights({"a": 0.5, "b": 0.4}, LANES)
    with pytest.raises(ValueError, match="unknown lanes"):
        Weights({"z": 1.0}, LANES)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Weights({"a": 1.5, "b": -0.5}, LANES)


def test_gained_names_lanes_with_a_larger_share():
    before = Weights({"a": 0.8, "b": 0.2}, LANES)
    after = Weights({"a": 0.5, "b": 0.3, "c": 0.2}, LANES)
    assert after.gained(before) == ("b", "c")


def test_draw_follows_the_weights_and_never_picks_a_zero_lane():
    w = Weights({"a": 0.2, "c": 0.8}, LANES)
    rng = random.Random(7)
    counts = Counter(w.draw(rng.random()) for _ in range(20_000))
    assert counts["b"] == 0
    # binomial(20000, 0.2): sd ~ 57; 4 sd either side
    assert abs(counts["a"] - 4000) < 230
    assert w.draw(0.0) == "a"
    assert w.draw(0.9999999999999999) == "c"


def test_equality_with_mappings_fills_missing_lanes_with_zero():
    assert Weights({"a": 1.0}, LANES) == {"a": 1.0}
    assert Weights({"a": 1.0}, LANES) != {"b": 1.0}
