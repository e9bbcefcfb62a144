"""Generated traces: arrival processes with token sizes, seeded, vectorised with NumPy.

    poisson(rate, duration)                         a constant rate
    on_off(high, low, mean_on, mean_off, duration)  bursts: a two-state Markov-modulated Poisson process
    diurnal(mean, amplitude, period, duration)      a sinusoidal rate (thinning of a Poisson process)
    step([(at, rate), ...], duration)               piecewise-constant rates, e.g. a load step

Each takes a `numpy.random.Generator` (the only randomness) and a `Sizes`
that draws input and output tokens: log-normal with given medians, or
resampled from a real trace (`Sizes.like(trace)`). Every request gets
`route`; the traces transforms (pinned share, scaling, slicing) apply after.

What must not live here: reading and writing trace files (simulator.traces).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from simulator.traces import TraceRequest


@dataclass(frozen=True, slots=True)
class Sizes:
    """Token counts per request: log-normal around the medians, or drawn from `pool`."""

    input_median: float = 512.0
    output_median: float = 128.0
    sigma: float = 0.8
    pool: tuple[tuple[int, int], ...] = ()

    @classmethod
    def like(cls, trace: Sequence[TraceRequest]) -> Sizes:
        if not trace:
            raise ValueError("Sizes.like needs a trace with requests")
        return cls(pool=tuple((r.input_tokens, r.output_tokens) for r in trace))

    def draw(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if self.pool:
            picks = np.asarray(self.pool)[rng.integers(0, len(self.pool), n)]
            return picks[:, 0], picks[:, 1]
        inputs = np.maximum(1, rng.lognormal(np.log(self.input_median), self.sigma, n).round())
        outputs = np.maximum(1, rng.lognormal(np.log(self.output_median), self.sigma, n).round())
        return inputs.astype(np.int64), outputs.astype(np.int64)


def poisson(
    rate_per_s: float, duration_s: float, rng: np.random.Generator, sizes: Sizes = Sizes(), route: str = "/"
) -> list[TraceRequest]:
    return step([(0.0, rate_per_s)], duration_s, rng, sizes, route)


def step(
    rates: Sequence[tuple[float, float]],
    duration_s: float,
    rng: np.random.Generator,
    sizes: Sizes = Sizes(),
    route: str = "/",
) -> list[TraceRequest]:
    """From each (at_s, rate) until the next (or duration_s), Poisson arrivals at that rate."""
    if not rates or rates[0][0] != 0.0:
        raise ValueError("rates must start at 0 s: [(0.0, rate), (at_s, rate), ...]")
    if any(b[0] <= a[0] for a, b in zip(rates, rates[1:])):
        raise ValueError("the times in rates must increase")
    ends = [at for at, _ in rates[1:]] + [duration_s]
    segments = [(at, min(end, duration_s), rate) for (at, rate), end in zip(rates, ends) if at < duration_s]
    return _build(_piecewise(segments, rng), rng, sizes, route)


def on_off(
    high_per_s: float,
    low_per_s: float,
    mean_on_s: float,
    mean_off_s: float,
    duration_s: float,
    rng: np.random.Generator,
    sizes: Sizes = Sizes(),
    route: str = "/",
) -> list[TraceRequest]:
    """Bursts: `high` for exponential spells of mean `mean_on_s`, `low` between them; starts low."""
    segments, t, on = [], 0.0, False
    while t < duration_s:
        length = rng.exponential(mean_on_s if on else mean_off_s)
        segments.append((t, min(t + length, duration_s), high_per_s if on else low_per_s))
        t += length
        on = not on
    return _build(_piecewise(segments, rng), rng, sizes, route)


def diurnal(
    mean_per_s: float,
    amplitude: float,
    period_s: float,
    duration_s: float,
    rng: np.random.Generator,
    sizes: Sizes = Sizes(),
    route: str = "/",
    trough_at_s: float = 0.0,
) -> list[TraceRequest]:
    """rate(t) = mean x (1 - amplitude x cos(2 pi (t - trough) / period)): lowest at `trough_at_s`."""
    if not 0 <= amplitude <= 1:
        raise ValueError(f"amplitude must be within [0, 1], got {amplitude}")
    peak = mean_per_s * (1 + amplitude)
    candidates = _piecewise([(0.0, duration_s, peak)], rng)
    rate = mean_per_s * (1 - amplitude * np.cos(2 * np.pi * (candidates - trough_at_s) / period_s))
    kept = candidates[rng.random(len(candidates)) * peak < rate]
    return _build(kept, rng, sizes, route)


def _piecewise(segments: Sequence[tuple[float, float, float]], rng: np.random.Generator) -> np.ndarray:
    """Sorted arrival times of a Poisson process with a constant rate on each (start, end, rate)."""
    parts = []
    for start, end, rate in segments:
        if rate < 0:
            raise ValueError(f"rates must not be negative, got {rate}")
        n = rng.poisson(rate * (end - start))
        parts.append(rng.uniform(start, end, n))
    return np.sort(np.concatenate(parts)) if parts else np.empty(0)


def _build(times: np.ndarray, rng: np.random.Generator, sizes: Sizes, route: str) -> list[TraceRequest]:
    inputs, outputs = sizes.draw(len(times), rng)
    return [TraceRequest(t, i, o, route) for t, i, o in zip(times.tolist(), inputs.tolist(), outputs.tolist())]
