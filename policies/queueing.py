"""Queueing models: the latency a lane will show at an arrival rate, before it shows it.

A lane with `servers` calls at once, Poisson arrivals at `rate_per_s` and a
service time of mean `service_s` and squared coefficient of variation
`scv` (1 for exponential; M/M/c), is an M/G/c queue:

- Erlang C, the chance an arrival waits, from Erlang B written with
  scipy's regularised Poisson functions (stable for hundreds of servers);
- the wait of those who wait, exponential with mean
  (1 + scv) / 2 / (c mu - lambda), the Allen-Cunneen correction of the
  M/M/c wait for a general service distribution;
- the service itself, log-normal with the given mean and scv.

`sojourn_quantile_s` adds the service quantile to the wait quantile (at q,
the share of an objective: 0.99 for p99; `p95_sojourn_s` at 0.95). The two
are rarely both at their tails, so the sum overstates the true quantile a
little: the prediction errs towards keeping the objective. At or over saturation (rho >= 1)
the queue grows without bound and the answer is infinity.

Pure arithmetic: no clock, no state.
"""

from __future__ import annotations

import math

from scipy.special import gammaln, ndtri, pdtr

Q95_Z = 1.6448536269514722  # standard normal quantile at 0.95


def erlang_c(servers: int, offered_erlangs: float) -> float:
    """Chance that an arrival waits in an M/M/c queue (1.0 at or over saturation)."""
    c, a = servers, offered_erlangs
    if a <= 0:
        return 0.0
    if a >= c:
        return 1.0
    # Erlang B = P(N = c) / P(N <= c) for N ~ Poisson(a).
    pmf = math.exp(c * math.log(a) - a - gammaln(c + 1))
    blocking = pmf / pdtr(c, a)
    rho = a / c
    return float(blocking / (1.0 - rho * (1.0 - blocking)))


def service_p95_s(mean_s: float, scv: float) -> float:
    """The 95th percentile of a log-normal service time with this mean and scv."""
    return service_quantile_s(0.95, mean_s, scv)


def service_quantile_s(q: float, mean_s: float, scv: float) -> float:
    """The q-quantile of a log-normal service time with this mean and scv."""
    if scv <= 0:
        return mean_s
    sigma2 = math.log1p(scv)
    z = Q95_Z if q == 0.95 else float(ndtri(q))
    return mean_s * math.exp(-0.5 * sigma2 + z * math.sqrt(sigma2))


def p95_sojourn_s(rate_per_s: float, servers: int, service_s: float, scv: float = 1.0) -> float:
    """Predicted p95 of arrival-to-answer time; inf at or over saturation."""
    return sojourn_quantile_s(0.95, rate_per_s, servers, service_s, scv)


def sojourn_quantile_s(q: float, rate_per_s: float, servers: int, service_s: float, scv: float = 1.0) -> float:
    """Predicted q-quantile of arrival-to-answer time; inf at or over saturation."""
    return service_quantile_s(q, service_s, scv) + wait_quantile_s(q, rate_per_s, servers, service_s, scv)


def wait_quantile_s(q: float, rate_per_s: float, servers: int, service_s: float, scv: float = 1.0) -> float:
    """Predicted q-quantile of the wait for a server alone (0 when fewer than 1 - q wait); inf at saturation."""
    if rate_per_s <= 0:
        return 0.0
    offered = rate_per_s * service_s
    if offered >= servers:
        return math.inf
    waits = erlang_c(servers, offered)
    tail = 1.0 - q
    if waits <= tail:
        return 0.0
    # The wait of those who wait is exponential: P(W > w) = C exp(-w / mean).
    drain_per_s = servers / service_s - rate_per_s
    mean_wait = (1.0 + scv) / 2.0 / drain_per_s
    return mean_wait * math.log(waits / tail)


def scv_from_quantiles(mean_s: float, median_s: float) -> float:
    """The scv of a log-normal with this mean and median (1.0 when they cannot tell)."""
    if not (mean_s > 0 and median_s > 0):
        return 1.0
    if mean_s <= median_s:
        return 0.0
    sigma2 = 2.0 * math.log(mean_s / median_s)
    return math.expm1(sigma2)
