"""Lane service models: how long a lane takes to answer, and how many it serves at once.

A service model file (YAML, written by `modeshift profile` or by hand) gives
each lane one of two kinds:

- `server`: a deployment of `replicas` x `concurrency` servers (one server
  answers one request, or one merged micro-batch, at a time). The time one
  call takes is linear in what it carries,
      base + per_item * items + per_input_token * input + per_output_token * output,
  times a log-normal factor with mean 1 and spread `jitter` (its sigma).
  `fit_latency` finds the coefficients from measurements by non-negative
  least squares (scipy), and the jitter from the residuals.
- `batch_api`: a provider's batch API (OpenAI, Anthropic, Bedrock): no
  queueing at our side; requests are gathered into batch files by the
  router's own rule (policies.path.provider_batching, with the `max_requests`,
  `max_bytes` and `max_wait` a router lane's `batch_api:` takes), and each
  file takes a turnaround drawn from a log-normal with the given median and
  sigma, never over `max_turnaround` (24 h at most, the
  providers' completion window). Its price, discount included, is the
  lane's `cost:`.

    lanes:
      realtime: {kind: server, replicas: 2, concurrency: 4,
                 latency: {base: 20ms, per_input_token: 0.05ms, per_output_token: 12ms, jitter: 0.2},
                 failures: {error_rate: 0.01, down: [{from: 60s, to: 120s, replicas: 1}]}}
      batch:    {kind: batch_api, turnaround_median: 20m, turnaround_sigma: 0.8}
    hop: 1.5ms

A server lane may fail (`failures:`): a share of its calls answered with a
500 (`error_rate`), and outages in which some or all of its replicas refuse
connections (`down`). The router's answers to that are played by its own
rules (simulator.failure_path): each replica is an upstream of the lane's
pool (policies.path.upstream_pool: least in flight, outlier ejection), a refused
connection is retried on the next replica and then the next lane within the
retry budget (policies.path.retry_budget), a call longer than the lane's
`timeout` is a 504. A lane without `failures:` never fails and never times
out (the fast path of a million-request run).

`hop` (default 0) is the time the router itself and the network add to
every answer as the client sees it: the simulated latencies include it, the
lanes' busy time and the router's own latency windows do not. It matters
where calls take milliseconds (embeddings on a CPU), hardly where they take
seconds; `modeshift profile --via` measures it.

What must not live here: queueing (simulator.engine), prices (the config's
cost models).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.optimize import nnls

from configs.loader import load_document
from policies.units import ByteSize, Duration

DAY_S = 86_400.0


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Latency(_Model):
    """Seconds one call takes, as a linear function of what it carries."""

    base_s: Duration = Field(0.0, alias="base", ge=0, description="fixed time of every call")
    per_item_s: Duration = Field(0.0, alias="per_item", ge=0, description="added per item (text, row)")
    per_input_token_s: Duration = Field(0.0, alias="per_input_token", ge=0, description="added per input token")
    per_output_token_s: Duration = Field(0.0, alias="per_output_token", ge=0, description="added per output token")
    jitter: float = Field(0.0, ge=0, le=3, description="sigma of the log-normal factor (mean 1) on each call")

    def mean_s(self, items: float, input_tokens: float, output_tokens: float) -> float:
        return (
            self.base_s
            + self.per_item_s * items
            + self.per_input_token_s * input_tokens
            + self.per_output_token_s * output_tokens
        )


class Outage(_Model):
    """A stretch of the run in which some of a lane's replicas refuse every connection."""

    from_s: Duration = Field(alias="from", ge=0, description="when it starts, in the trace's seconds")
    to_s: Duration = Field(alias="to", gt=0, description="when the replicas take connections again")
    replicas: int | None = Field(None, ge=1, description="how many of the lane's replicas are down; default: all")

    @model_validator(mode="after")
    def _ends_after_it_starts(self) -> Outage:
        if self.to_s <= self.from_s:
            raise ValueError(f"an outage must end after it starts: from {self.from_s:g}s to {self.to_s:g}s")
        return self


class Failures(_Model):
    """How a lane's upstreams fail: the router's answers to it (timeouts, ejection, retries, failover) follow."""

    error_rate: float = Field(0.0, ge=0, le=1, description="share of calls a replica answers with a 500")
    down: list[Outage] = Field(default_factory=list, description="outages: replicas that refuse connections")


class ServerLane(_Model):
    kind: Literal["server"] = "server"
    replicas: int = Field(1, ge=1, description="model server instances behind the lane")
    concurrency: int = Field(1, ge=1, description="calls one replica serves at once")
    latency: Latency = Field(default_factory=Latency)
    failures: Failures | None = Field(
        None, description="errors and outages; with it, calls also time out after the lane's `timeout`"
    )

    @property
    def servers(self) -> int:
        return self.replicas * self.concurrency


class BatchApiLane(_Model):
    kind: Literal["batch_api"]
    turnaround_median_s: Duration = Field(1800.0, alias="turnaround_median", gt=0)
    turnaround_sigma: float = Field(1.0, ge=0, le=3, description="sigma of the log-normal turnaround")
    max_turnaround_s: Duration = Field(DAY_S, alias="max_turnaround", gt=0, le=DAY_S)
    # How requests are gathered into files: the settings of a router lane's `batch_api:`
    # (policies.path.provider_batching).
    max_requests: int = Field(10_000, ge=1, description="lines per batch file")
    max_bytes: ByteSize = Field(100 * 1000**2, ge=1, description="bytes per batch file")
    max_wait_s: Duration = Field(60.0, alias="max_wait", ge=0, description="a file goes this long after its first line")

    @model_validator(mode="after")
    def _median_within_ceiling(self) -> BatchApiLane:
        if self.turnaround_median_s > self.max_turnaround_s:
            raise ValueError(
                f"turnaround_median ({self.turnaround_median_s:g}s) exceeds max_turnaround ({self.max_turnaround_s:g}s)"
            )
        return self


LaneService = Annotated[ServerLane | BatchApiLane, Field(discriminator="kind")]


class ServiceModel(_Model):
    lanes: dict[str, LaneService] = Field(min_length=1)
    hop_s: Duration = Field(
        0.0,
        alias="hop",
        ge=0,
        description="what the router and the network add to each answer the client sees, outside the lane's call",
    )
    source: str | None = Field(None, description="where the figures came from (a URL and a date, a paper)")


def load_service_model(path: str | Path) -> ServiceModel:
    """A service model file; ConfigError lines name file, line, field and value."""
    return load_document(path, ServiceModel, "a mapping with `lanes:` (lane name -> service model)")


def check_covers(model: ServiceModel, lanes: Sequence[str], source: str = "the service model") -> None:
    missing = [lane for lane in lanes if lane not in model.lanes]
    if missing:
        raise ValueError(f"{source} has no entry for lane(s) {', '.join(missing)}; it models {', '.join(model.lanes)}")


class Measurement(_Model):
    """One measured call: what it carried and how long it took."""

    items: int
    input_tokens: int
    output_tokens: int
    latency_s: float


def fit_latency(measurements: Sequence[Measurement]) -> Latency:
    """Non-negative least squares over (1, items, input, output); jitter from the log residuals.

    The squares are of relative errors: the noise is a factor on each call,
    so a 400 ms call is no surer a witness than a 12 ms one, and fitting
    absolute errors would let the largest batches set the base time (a
    single-item call came out 70% slow that way). A feature that never varies
    in the data cannot be told apart from the base time, so it gets no
    coefficient of its own.
    """
    if len(measurements) < 2:
        raise ValueError("fitting a latency model needs at least two measurements")
    x = np.array([[1.0, m.items, m.input_tokens, m.output_tokens] for m in measurements])
    y = np.array([m.latency_s for m in measurements])
    if (y <= 0).any():
        raise ValueError("every measured latency must be positive")
    varies = [0] + [j for j in (1, 2, 3) if np.ptp(x[:, j]) > 0]
    # Scale the columns so tokens (thousands) and the constant weigh alike,
    # and each row by its latency, so the squares are relative errors.
    scale = np.abs(x[:, varies]).max(axis=0)
    solution, _ = nnls(x[:, varies] / scale / y[:, None], np.ones_like(y))
    coef = np.zeros(4)
    coef[varies] = solution / scale
    predicted = x @ coef
    ok = predicted > 0
    jitter = float(np.std(np.log(y[ok] / predicted[ok]))) if ok.sum() > 1 else 0.0
    return Latency(
        base_s=float(coef[0]),
        per_item_s=float(coef[1]),
        per_input_token_s=float(coef[2]),
        per_output_token_s=float(coef[3]),
        jitter=min(jitter, 3.0),
    )


def jittered_s(mean_s: float, sigma: float, z: float) -> float:
    """`mean_s` times the log-normal factor (mean 1, spread sigma) of a standard normal draw `z`."""
    return mean_s * math.exp(sigma * z - 0.5 * sigma * sigma) if sigma else mean_s
