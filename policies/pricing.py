"""What a lane costs: the cost model behind every attributed dollar.

A lane's price has up to four parts, all optional:

- `per_hour`: a provisioned deployment, the whole lane (a GPU node). With billing
  "provisioned" it is paid whether or not requests come, so its cost per
  request is the hourly price amortised over the requests served; with
  billing "busy" (serverless, pay per second of work) it is paid only for the
  busy time attributed to each request.
- `per_replica_hour`: the same, per replica of the lane: a lane of N replicas
  (ready or starting: a GPU loading its model is paid for) costs N times it.
- `per_request`: a flat price per request.
- `per_1k_input_tokens` / `per_1k_output_tokens`: token prices (provider APIs).
- `discount`: the fraction taken off everything (provider batch APIs: 0.5).

The model is a pure function of its inputs: the driver attributes each
request's variable cost when it completes, and the snapshot adds the
provisioned share over the window. A merged call (micro-batching) is one
cost, shared among the requests that rode in it by their items
(`item_shares`), in the router and the simulator alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class CostModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    per_hour: float = Field(0.0, ge=0, description="USD per hour of the deployment, the whole lane")
    per_replica_hour: float = Field(
        0.0, ge=0, description="USD per hour of each replica, ready or starting (a GPU node of the lane)"
    )
    billing: Literal["provisioned", "busy"] = Field(
        "provisioned",
        description="provisioned: per_hour is paid all the time; busy: only for busy seconds",
    )
    per_request: float = Field(0.0, ge=0, description="USD per request")
    per_1k_input_tokens: float = Field(0.0, ge=0, description="USD per 1,000 input tokens")
    per_1k_output_tokens: float = Field(0.0, ge=0, description="USD per 1,000 output tokens")
    discount: float = Field(0.0, ge=0, lt=1, description="fraction off every price (0.5: half price)")

    def hourly_usd(self, replicas: int = 1) -> float:
        """The lane's hourly price with `replicas` replicas (ready and starting)."""
        return self.per_hour + self.per_replica_hour * replicas

    def request_cost_usd(self, input_tokens: float = 0, output_tokens: float = 0, busy_s: float = 0.0) -> float:
        """The variable cost of one request (or of a mean request, given mean counts)."""
        cost = (
            self.per_request
            + self.per_1k_input_tokens * input_tokens / 1000.0
            + self.per_1k_output_tokens * output_tokens / 1000.0
        )
        if self.billing == "busy":
            cost += self.hourly_usd() * busy_s / 3600.0
        return cost * (1.0 - self.discount)

    def idle_cost_usd(self, span_s: float, replicas: int = 1) -> float:
        """The provisioned cost of `span_s` seconds with `replicas` replicas, whatever the traffic."""
        return self.provisioned_usd(span_s, replicas * span_s)

    def provisioned_usd(self, span_s: float, replica_s: float) -> float:
        """The provisioned cost of `span_s` seconds in which the lane's replicas added up to `replica_s`
        replica-seconds (a lane whose replicas changed over the span)."""
        if self.billing != "provisioned":
            return 0.0
        return (self.per_hour * span_s + self.per_replica_hour * replica_s) / 3600.0 * (1.0 - self.discount)

    def marginal_per_request_usd(self, input_tokens: float, output_tokens: float, busy_s: float) -> float:
        """What one more request of these mean counts adds to the bill (a provisioned price adds nothing: it is
        paid anyway); an unknown (NaN) count adds nothing."""
        return self.request_cost_usd(_zero_if_nan(input_tokens), _zero_if_nan(output_tokens), _zero_if_nan(busy_s))

    def estimate_per_request_usd(
        self,
        *,
        rate_per_s: float,
        input_tokens: float,
        output_tokens: float,
        busy_s: float,
        replicas: int = 1,
    ) -> float:
        """Cost per request if this lane served all traffic at `rate_per_s`.

        Token counts and busy time are per-request means; NaN when the rate is
        unknown and a provisioned price would need amortising.
        """
        variable = self.marginal_per_request_usd(input_tokens, output_tokens, busy_s)
        if self.billing == "provisioned" and self.hourly_usd(replicas) > 0:
            if not rate_per_s > 0:
                return math.nan
            variable += self.idle_cost_usd(1.0 / rate_per_s, replicas)
        return variable


def _zero_if_nan(x: float) -> float:
    return 0.0 if math.isnan(x) else x


def item_shares(items: Sequence[int]) -> list[float]:
    """Each request's share of a merged call (its cost, its busy time): its items over the call's."""
    total = sum(items)
    return [n / total for n in items]
