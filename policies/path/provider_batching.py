"""Provider batch lanes: their settings, when a gathered batch file must go, and when to poll it.

A lane with `batch_api:` sends its jobs to a provider's Batch API (OpenAI
Files + Batches, Anthropic Message Batches) instead of calling it once per
job. Jobs are gathered into one file per (endpoint, model, credential); a
file goes when it holds `max_requests` lines, when one more line would pass
`max_bytes`, or `max_wait` after its first line, whichever comes first
(`FileGathering`). The router (router.jobs.provider) and the simulator
(simulator.lane_run) gather with this one rule, so a simulated provider lane
makes the files the live one would.

While the provider works, the batch is polled every `poll`, spread by
jitter (x 0.8 to 1.2) so many routers do not poll in step; a poll that
failed waits twice as long each time, up to 32 polls' worth (`poll_delay_s`).

The providers' limits are checked here, at load time: OpenAI 50,000 lines
and 200 MB per file; Anthropic 100,000 requests and 256 MB per batch.

Pure: no clock, no I/O; times come in as seconds, randomness as a number
in [0, 1) from the caller's seeded generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from policies.units import ByteSize, Duration, Timer

Api = Literal["openai", "anthropic"]


@dataclass(frozen=True, slots=True)
class ProviderLimits:
    max_requests: int
    max_bytes: int
    windows: tuple[str, ...]  # completion windows the provider accepts


LIMITS: dict[str, ProviderLimits] = {
    "openai": ProviderLimits(50_000, 200 * 1000**2, ("24h",)),
    "anthropic": ProviderLimits(100_000, 256 * 1000**2, ("24h",)),
}
WINDOW_S = {"24h": 86_400.0}
MAX_POLL_BACKOFF = 32  # a failing provider is polled at most this many poll intervals apart


class BatchApiParams(BaseModel):
    """The `batch_api:` section of a lane."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    api: Api = Field(description="whose Batch API: openai (Files + Batches) or anthropic (Message Batches)")
    max_requests: int = Field(10_000, ge=1, description="lines per batch file at most")
    max_bytes: ByteSize = Field(100 * 1000**2, ge=1, description="size of a batch file at most")
    max_wait_s: Duration = Field(
        60.0, alias="max_wait", ge=0, description="a file goes this long after its first line, however small"
    )
    poll_s: Timer = Field(30.0, alias="poll", description="how often a submitted batch is asked for news")
    completion_window: str = Field("24h", description="the window asked of the provider")
    deadline_margin_s: Duration = Field(
        300.0,
        alias="deadline_margin",
        ge=0,
        description="a job whose deadline is this close and whose line the provider has not answered runs on "
        "the fallback lane instead",
    )
    upload_attempts: int = Field(
        8,
        ge=1,
        description="failed tries to hand a batch to the provider (backing off) before its jobs run on the "
        "fallback lane",
    )
    fallback: str | None = Field(
        None, description="the lane that runs expired, failed-over and late lines; default: the first other lane"
    )

    @model_validator(mode="after")
    def _within_the_providers_limits(self) -> BatchApiParams:
        limits = LIMITS[self.api]
        if self.max_requests > limits.max_requests:
            raise ValueError(f"max_requests {self.max_requests} is over {self.api}'s {limits.max_requests:,}")
        if self.max_bytes > limits.max_bytes:
            raise ValueError(f"max_bytes {self.max_bytes} is over {self.api}'s {limits.max_bytes:,}")
        if self.completion_window not in limits.windows:
            raise ValueError(f"completion_window {self.completion_window!r}: {self.api} takes {limits.windows}")
        return self

    @property
    def window_s(self) -> float:
        return float(WINDOW_S[self.completion_window])


@dataclass(frozen=True, slots=True)
class FileGathering:
    """When a gathered batch file is full and when it is due."""

    max_requests: int
    max_bytes: int
    max_wait_s: float

    @classmethod
    def of(cls, params: BatchApiParams) -> FileGathering:
        return cls(params.max_requests, params.max_bytes, params.max_wait_s)

    def fits(self, lines: int, size: int, line_bytes: int) -> bool:
        """Whether one more line of `line_bytes` fits a file of `lines` lines and `size` bytes (an empty file
        takes any one line: a line over max_bytes goes alone, and the provider judges it)."""
        return lines == 0 or (lines < self.max_requests and size + line_bytes <= self.max_bytes)

    def full(self, lines: int, size: int) -> bool:
        return lines >= self.max_requests or size >= self.max_bytes

    def due_at(self, first_line_s: float, lines: int, size: int) -> float:
        """When the file must go: at once when full, else `max_wait` after its first line."""
        return first_line_s if self.full(lines, size) else first_line_s + self.max_wait_s


def poll_delay_s(poll_s: float, failures: int, u: float) -> float:
    """Seconds to the next poll: `poll` x 2^failures (at most MAX_POLL_BACKOFF x), times a jitter of 0.8 to 1.2."""
    backoff = float(min(2 ** min(failures, 16), MAX_POLL_BACKOFF))
    return poll_s * backoff * (0.8 + 0.4 * u)
