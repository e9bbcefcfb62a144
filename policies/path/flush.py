"""Flush rules: when a micro-batch must go, and how large it may be.

A rule sees only the queue's shape (how many items, since when the oldest
has waited) and answers two questions: `limit()`, the most items one batch
may carry now, and `due_at(oldest_s, queued)`, the time at which the batch
must be sent. Rules never hold items and never read a clock; the batcher
(policies.path.batching) owns the queue, and the router's timers only carry out
the times they are given.

- size: wait until `max_batch` items are queued (never flushes a part batch).
- time: flush `max_wait` after the oldest item arrived (Triton's
  max_queue_delay, Ray Serve's batch_wait_timeout), at most `max_batch`.
- hybrid: whichever comes first.
- adaptive: hybrid with a batch size found by AIMD under a latency target
  (Clipper, NSDI 2017): after each batch, a latency at or under the target
  raises the limit by `increase`, a miss cuts it by the fraction `decrease`.

The `batching:` section of a lane is one of these models, chosen by `rule`.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from policies.units import Duration

_NEVER = math.inf


class _RuleParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    max_batch: int = Field(32, ge=1, description="most items in one upstream call")
    max_batch_tokens: int = Field(
        32768, ge=1, description="most input tokens in one upstream call; a larger request goes alone"
    )
    queue_capacity: int = Field(1024, ge=1, description="most requests waiting; more are refused (503)")

    def build(self) -> FlushRule:
        raise NotImplementedError


class SizeRule(_RuleParams):
    rule: Literal["size"] = "size"

    def build(self) -> FlushRule:
        return _Size(self.max_batch)


class TimeRule(_RuleParams):
    rule: Literal["time"] = "time"
    max_wait_s: Duration = Field(0.01, alias="max_wait", description="longest an item waits for company")

    def build(self) -> FlushRule:
        return _Hybrid(math.inf, self.max_wait_s, self.max_batch)


class HybridRule(_RuleParams):
    rule: Literal["hybrid"] = "hybrid"
    max_wait_s: Duration = Field(0.01, alias="max_wait", description="longest an item waits for company")

    def build(self) -> FlushRule:
        return _Hybrid(self.max_batch, self.max_wait_s, self.max_batch)


class AdaptiveRule(_RuleParams):
    rule: Literal["adaptive"] = "adaptive"
    max_batch: int = Field(128, ge=1, description="the largest batch AIMD may reach")
    min_batch: int = Field(1, ge=1, description="the smallest batch AIMD may cut to")
    max_wait_s: Duration = Field(0.01, alias="max_wait", description="longest an item waits for company")
    target_latency_s: Duration = Field(0.2, alias="target_latency", description="latency one batch may take")
    increase: int = Field(1, ge=1, description="items added to the limit after a batch on target")
    decrease: float = Field(0.1, gt=0, lt=1, description="fraction cut from the limit after a miss")

    @model_validator(mode="after")
    def _bounds(self) -> AdaptiveRule:
        if self.min_batch > self.max_batch:
            raise ValueError(f"min_batch ({self.min_batch}) must not exceed max_batch ({self.max_batch})")
        return self

    def build(self) -> FlushRule:
        return _Adaptive(self)


BatchingParams = Annotated[SizeRule | TimeRule | HybridRule | AdaptiveRule, Field(discriminator="rule")]


class FlushRule:
    """The decision interface the batcher calls."""

    def limit(self) -> int:
        raise NotImplementedError

    def due_at(self, oldest_s: float, queued: int) -> float:
        """When the batch must be sent, given the oldest enqueue time and the item count."""
        raise NotImplementedError

    def observe(self, items: int, latency_s: float) -> None:
        """Feedback after a batch finished; only adaptive rules use it."""


class _Size(FlushRule):
    def __init__(self, max_batch: int):
        self.max_batch = max_batch

    def limit(self) -> int:
        return self.max_batch

    def due_at(self, oldest_s: float, queued: int) -> float:
        return oldest_s if queued >= self.max_batch else _NEVER


class _Hybrid(FlushRule):
    """Due when `fill` items wait, or `max_wait_s` after the oldest; at most `cap` per batch."""

    def __init__(self, fill: float, max_wait_s: float, cap: int):
        self.fill = fill
        self.max_wait_s = max_wait_s
        self.cap = cap

    def limit(self) -> int:
        return self.cap

    def due_at(self, oldest_s: float, queued: int) -> float:
        return oldest_s if queued >= self.fill else oldest_s + self.max_wait_s


class _Adaptive(FlushRule):
    def __init__(self, params: AdaptiveRule):
        self.params = params
        self.current = float(params.min_batch)

    def limit(self) -> int:
        return int(self.current)

    def due_at(self, oldest_s: float, queued: int) -> float:
        return oldest_s if queued >= self.limit() else oldest_s + self.params.max_wait_s

    def observe(self, items: int, latency_s: float) -> None:
        p = self.params
        if latency_s <= p.target_latency_s:
            # Grow only when the batch was full: a part batch that met the
            # target says nothing about a larger one.
            if items >= self.limit():
                self.current = min(float(p.max_batch), self.current + p.increase)
        else:
            self.current = max(float(p.min_batch), math.floor(self.current * (1.0 - p.decrease)))
