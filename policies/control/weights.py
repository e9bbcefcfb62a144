"""Weights: the split of switchable traffic over lanes, as an immutable value.

A Weights object always names every configured lane (a lane with no traffic
has weight 0.0), every weight is in [0, 1], and the weights sum to 1 within
1e-9. Transitions are built from `toward()`, a convex combination of two
weight vectors, so every intermediate split keeps those invariants and each
lane's weight moves monotonically from its start to its target.

`draw(u)` maps a uniform number in [0, 1) to a lane; the caller owns the
random source (an injected, seeded `random.Random`), so splits are
reproducible.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Mapping

SUM_TOLERANCE = 1e-9


class Weights(Mapping[str, float]):
    __slots__ = ("_items", "_lanes", "_cumulative")

    def __init__(self, weights: Mapping[str, float], lanes: tuple[str, ...] | None = None):
        lanes = tuple(lanes) if lanes is not None else tuple(sorted(weights))
        unknown = set(weights) - set(lanes)
        if unknown:
            raise ValueError(f"weights name unknown lanes: {sorted(unknown)}")
        items = {lane: float(weights.get(lane, 0.0)) for lane in lanes}
        for lane, w in items.items():
            if not (0.0 <= w <= 1.0) or math.isnan(w):
                raise ValueError(f"weight of lane {lane!r} is {w}; each weight must be in [0, 1]")
        total = math.fsum(items.values())
        if abs(total - 1.0) > SUM_TOLERANCE:
            raise ValueError(f"weights sum to {total}; they must sum to 1")
        self._items = items
        self._lanes = lanes
        running = 0.0
        cumulative = []
        for lane in lanes:
            running += items[lane]
            cumulative.append(running)
        self._cumulative = cumulative

    def __getitem__(self, lane: str) -> float:
        return self._items[lane]

    def __iter__(self) -> Iterator[str]:
        return iter(self._lanes)

    def __len__(self) -> int:
        return len(self._lanes)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return all(self._items[lane] == float(other.get(lane, 0.0)) for lane in self._lanes) and all(
                lane in self._items for lane in other
            )
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self._items.items()))

    def __repr__(self) -> str:
        return "Weights(" + ", ".join(f"{lane}={w:.4g}" for lane, w in self._items.items()) + ")"

    @property
    def lanes(self) -> tuple[str, ...]:
        return self._lanes

    def as_dict(self) -> dict[str, float]:
        return dict(self._items)

    def toward(self, target: Weights, fraction: float) -> Weights:
        """The split `fraction` of the way from these weights to `target`.

        fraction 1.0 returns `target` itself, so a completed ramp lands on the
        mode's exact weights, free of rounding.
        """
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction {fraction} must be in [0, 1]")
        if fraction == 1.0:
            return target
        if fraction == 0.0:
            return self
        mixed = {
            lane: min(1.0, max(0.0, self._items[lane] + fraction * (target[lane] - self._items[lane])))
            for lane in self._lanes
        }
        # A convex combination sums to 1 up to rounding; put the rounding on
        # the largest weight so no weight leaves [0, 1].
        largest = max(mixed, key=mixed.__getitem__)
        mixed[largest] += 1.0 - math.fsum(mixed.values())
        return Weights(mixed, self._lanes)

    def gained(self, baseline: Weights) -> tuple[str, ...]:
        """Lanes whose share here is larger than in `baseline`."""
        return tuple(lane for lane in self._lanes if self._items[lane] > baseline[lane])

    def draw(self, u: float) -> str:
        """The lane for a uniform sample `u` in [0, 1)."""
        # The first lane whose cumulative share exceeds u: its own share is
        # cumulative[i] - cumulative[i-1] > 0, so a lane with weight 0 is never drawn.
        i = bisect.bisect_right(self._cumulative, u)
        if i >= len(self._lanes):
            # u above the rounded total: the last lane that has a share.
            i = max(j for j, lane in enumerate(self._lanes) if self._items[lane] > 0)
        return self._lanes[i]
