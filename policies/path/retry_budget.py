"""The retry budget: retries may add at most a share of the active requests.

Envoy's retry budget (default 20% of active requests, and at least 3 retries
at once so a quiet proxy can still retry): when an upstream goes down, every
request to it fails at once, and unbudgeted retries would double the load on
what is left exactly when it can least take it.
"""

from __future__ import annotations

import math


class RetryBudget:
    def __init__(self, ratio: float = 0.2, min_concurrent: int = 3):
        self.ratio = ratio
        self.min_concurrent = min_concurrent
        self.active = 0
        self.retrying = 0

    def allowed(self) -> int:
        return max(self.min_concurrent, math.floor(self.ratio * self.active))

    def try_acquire(self) -> bool:
        """Take one retry from the budget if there is room; release it with `release`."""
        if self.retrying >= self.allowed():
            return False
        self.retrying += 1
        return True

    def release(self) -> None:
        self.retrying -= 1
