"""The configuration schema: one YAML file, validated into frozen models.

Every model refuses unknown keys. Durations are written with units ("50ms",
"2s", "5m") and sizes may be ("10MiB"); in Python, durations are float
seconds under names ending in `_s`, each with its YAML name as alias.

Rules that span sections (a mode naming a lane that does not exist, weights
that do not sum to 1, ...) are checked in `ModeshiftConfig._cross_checks` and
reported at the exact place in the file, all at once.

What must not live here: YAML parsing and error formatting (configs.loader,
configs.errors) and building runtime objects (configs.assembly).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from policies.control.capacity import AutoscaleParams, ReplicaParams
from policies.control.objectives import BUILT_IN, ObjectiveParams
from policies.control.switching_params import SwitchingParams
from policies.path.access import CLASS, AccessParams
from policies.path.flush import BatchingParams
from policies.path.provider_batching import BatchApiParams
from policies.pricing import CostModel
from policies.registry import PolicySpec
from policies.units import ByteSize, Duration, Timer

Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]+$")]
"""Lane and mode names: letters, digits, '_' and '-' (they become metric labels)."""

Weight = Annotated[float, Field(ge=0, le=1)]
Protocol = Literal["http", "openai-embeddings", "openai-chat", "kserve-v2"]
ServiceTier = Literal["default", "flex", "priority"]
WEIGHT_SUM_TOLERANCE = 1e-6


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


def split_host_port(value: str) -> tuple[str, int]:
    """("127.0.0.1", 8080) for "127.0.0.1:8080" (brackets of an IPv6 host removed)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError('expected "host:port", like "127.0.0.1:8080"')
    return host.strip("[]"), int(port)


def check_http_url(url: str) -> None:
    """Raise ValueError naming what is wrong with an http(s) base URL (scheme, host, port; no query or fragment)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f'{url!r} is not an http(s) URL; expected "http://host:port"')
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError(f"{url!r}: the port must be a number from 1 to 65535")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r}: a base URL has no query or fragment (each request brings its own)")


def _host_port(value: str) -> str:
    split_host_port(value)
    return value


class ServerConfig(_Section):
    listen: str = Field("127.0.0.1:8080", description="data-plane address, host:port")
    admin_listen: str = Field("127.0.0.1:9090", description="admin API address, never the data port")
    admin_token_env: str = Field("MODESHIFT_ADMIN_TOKEN", description="environment variable holding the admin token")
    max_body_bytes: ByteSize = Field(10 * 2**20, description="larger request bodies get 413")
    max_header_bytes: ByteSize = Field(64 * 2**10, description="larger request headers get 431")
    receive_timeout_s: Duration = Field(30.0, alias="receive_timeout", description="time to receive a request (408)")
    header_timeout_s: Duration = Field(
        10.0, alias="header_timeout", gt=0, description="time from a request's first byte to its last header (408)"
    )
    keepalive_timeout_s: Duration = Field(
        60.0, alias="keepalive_timeout", gt=0, description="an idle connection is closed after this long"
    )
    max_connections: int | None = Field(
        None,
        ge=1,
        description="open client connections at most; more are refused (503). Default: half the "
        "process's open-file limit, the rest being for upstreams",
    )
    shutdown_timeout_s: Duration = Field(30.0, alias="shutdown_timeout", description="grace for in-flight requests")
    seed: int = Field(0, description="seed of the lane draw, for reproducible splits")

    _addresses = field_validator("listen", "admin_listen")(_host_port)


class OutlierConfig(_Section):
    """Passive outlier ejection of upstreams (Envoy's defaults)."""

    consecutive_errors: int = Field(5, ge=1, description="5xx or connect errors in a row that eject an upstream")
    base_ejection_s: Duration = Field(30.0, alias="base_ejection", description="first ejection; doubles each time")
    max_ejected_fraction: float = Field(0.1, ge=0, le=1, description="share of a lane's upstreams that may be out")


class DiscoveryConfig(_Section):
    """Upstreams found by DNS: each A/AAAA record of an upstream's host is one replica (a headless Service)."""

    kind: Literal["dns"] = Field("dns", description="dns: resolve each upstream's host")
    every_s: Timer = Field(5.0, alias="every", description="how often the records are read again")
    nameserver: str | None = Field(
        None, description='a nameserver to ask, "host:port"; default: the system\'s (/etc/resolv.conf)'
    )

    @field_validator("nameserver")
    @classmethod
    def _nameserver(cls, value: str | None) -> str | None:
        return value if value is None else _host_port(value)


class LaneConfig(_Section):
    upstreams: tuple[str, ...] = Field(min_length=1, description="base URLs of the lane's servers")
    max_in_flight: int = Field(256, ge=1, description="requests sent upstream at once")
    queue_depth: int = Field(1024, ge=0, description="requests waiting for a slot; more get 503 or spill")
    queue_timeout_s: Duration = Field(
        5.0, alias="queue_timeout", description="longest wait for a slot, then 503 queue_timeout (or spill)"
    )
    aging_s: Duration = Field(
        10.0,
        alias="aging",
        gt=0,
        description="a queued request moves up one priority level per this much waiting (starvation guard for long "
        "queue timeouts; shorter lets late requests overtake urgent ones under overload)",
    )
    spill: bool = Field(
        False,
        description="when no lane is predicted to meet a switchable request's objective, queue it on another "
        "lane rather than answer 503",
    )
    timeout_s: Duration = Field(
        60.0, alias="timeout", description="longest upstream silence, before the answer (504) or within it (cut)"
    )
    connect_timeout_s: Duration = Field(5.0, alias="connect_timeout", description="upstream connect timeout")
    batching: BatchingParams | None = Field(None, description="router micro-batching for batchable protocols")
    cost: CostModel = Field(default_factory=CostModel, description="what this lane costs")
    outlier: OutlierConfig = Field(default_factory=OutlierConfig)
    service_tier: ServiceTier | None = Field(
        None,
        description="OpenAI service tier this lane asks for (sent as the body's service_tier on chat requests); "
        "flex: the cost's discount is booked only for answers the provider says it ran as flex, and a 429 "
        "resource_unavailable spills to the next lane; priority: requests asking for priority (or fast) run here",
    )
    batch_api: BatchApiParams | None = Field(
        None, description="the lane is a provider's Batch API: jobs only, gathered into batch files"
    )
    replica: ReplicaParams = Field(default_factory=ReplicaParams, description="what one upstream of the lane holds")
    discovery: DiscoveryConfig | None = Field(
        None, description="find the lane's replicas by DNS, added and removed without a reload"
    )
    autoscale: AutoscaleParams | None = Field(
        None, description="the lane's replicas are decided (policies.control.capacity) and published for an autoscaler"
    )

    @field_validator("upstreams")
    @classmethod
    def _urls(cls, urls: tuple[str, ...]) -> tuple[str, ...]:
        for url in urls:
            check_http_url(url)
        return urls


class RouteConfig(_Section):
    path: str = Field(description="path prefix, e.g. /v1/embeddings")
    protocol: Protocol = Field("http", description="how requests on this route are read, merged and split")
    pin: Name | None = Field(None, description="send every request on this route to this lane")
    traffic_class: Name | None = Field(
        None, alias="class", description="the traffic class (objectives) of this route's requests"
    )

    @field_validator("path")
    @classmethod
    def _absolute(cls, path: str) -> str:
        if not path.startswith("/"):
            raise ValueError('a route path must start with "/"')
        return path


MAX_WINDOW_SLOTS = 10_000  # each lane and class keeps this many slots of counters and histograms


class MetricsConfig(_Section):
    window_s: Duration = Field(60.0, alias="window", description="how far back the lane figures look")
    slot_s: Timer = Field(1.0, alias="slot", description="granularity of the window")

    @model_validator(mode="after")
    def _slot_fits(self) -> MetricsConfig:
        if self.slot_s > self.window_s:
            raise ValueError(f"slot ({self.slot_s:g}s) must not exceed window ({self.window_s:g}s)")
        if self.window_s / self.slot_s > MAX_WINDOW_SLOTS:
            raise ValueError(
                f"window / slot = {self.window_s / self.slot_s:,.0f} slots per lane and class; at most "
                f"{MAX_WINDOW_SLOTS:,}: make the slot longer"
            )
        return self


class TelemetryConfig(_Section):
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = Field(False, description="one JSON line per request")
    prometheus: bool = Field(True, description="serve /metrics on the admin listener")
    otlp_endpoint: str | None = Field(
        None, description="OTLP/HTTP collector base URL, e.g. http://127.0.0.1:4318; None: no spans or OTLP metrics"
    )
    otlp_interval_s: Timer = Field(10.0, alias="otlp_interval", description="how often metrics are pushed")
    service_name: str = Field("modeshift", description="service.name on spans and metrics")
    trace_sampling: float = Field(
        0.01, ge=0, le=1, description="share of requests traced when the client sent no traceparent"
    )
    decisions_kept: int = Field(1000, ge=1, description="size of the decision audit ring")

    @field_validator("otlp_endpoint")
    @classmethod
    def _endpoint(cls, url: str | None) -> str | None:
        if url is not None:
            check_http_url(url)
        return url


class JobsConfig(_Section):
    enabled: bool = True
    database: str = Field(
        "modeshift-jobs.sqlite3",
        description="the durable job store: a SQLite file, made when the first job arrives, or a postgresql:// URL"
        " that several replicas share",
    )
    files: str | None = Field(
        None,
        description="a directory for the contents of /v1/files; default: beside a SQLite file, in a Postgres database",
    )
    lane: Name | None = Field(None, description='the lane jobs run on; default: the lane named "batch", else the first')
    schedule: Literal["asap", "idle"] = Field(
        "asap", description="asap: within max_share at once; idle: only while the lane has no queue"
    )
    max_share: float = Field(0.5, gt=0, le=1, description="share of the batch lane that jobs may use")
    attempts: int = Field(3, ge=1, description="tries per item before it fails")
    backoff_s: Duration = Field(1.0, alias="backoff", description="first retry delay")
    backoff_multiplier: float = Field(2.0, ge=1)
    lease_s: Timer = Field(
        10.0, alias="lease", description="a worker's claim on a job, renewed every third of it while it runs"
    )
    openai_api: bool = Field(True, description="serve /v1/files and /v1/batches (off to pass them to a provider lane)")
    max_file_bytes: ByteSize = Field(200 * 2**20, description="largest batch input file")


class ClusterConfig(_Section):
    """Several replicas with one controller: Redis holds the leader's lease, the weights and what each measured."""

    redis_url: str = Field(description='the Redis that holds the shared state, e.g. "redis://10.0.0.5:6379/0"')
    name: Name = Field("modeshift", description="replicas with the same name (and Redis) form one cluster")
    replica: str | None = Field(None, description="this replica's name in the cluster; default: host:pid")
    lease_ticks: int = Field(
        3,
        ge=2,
        description="the leader's lease, in control ticks: a replica takes over this long after a leader "
        "stops renewing it",
    )
    redis_timeout_s: Duration = Field(
        0.5, alias="redis_timeout", gt=0, description="longest wait for Redis, after which it counts as unreachable"
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, url: str) -> str:
        if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f'{url!r} is not a Redis URL; expected "redis://host:port/db"')
        return url


class ModeshiftConfig(_Section):
    server: ServerConfig = Field(default_factory=ServerConfig)
    lanes: dict[Name, LaneConfig] = Field(min_length=1)
    routes: tuple[RouteConfig, ...] = Field((RouteConfig(path="/"),), min_length=1)
    objectives: dict[Name, ObjectiveParams] = Field(
        default_factory=dict, description="traffic class -> its objective; pinned and switchable always exist"
    )
    modes: dict[Name, dict[str, Weight]] = Field(min_length=1, description="mode name -> {lane: weight}")
    initial_mode: str
    policy: PolicySpec
    switching: SwitchingParams = Field(default_factory=SwitchingParams)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    jobs: JobsConfig = Field(default_factory=JobsConfig)
    cluster: ClusterConfig | None = Field(None, description="several replicas, one controller; none: a lone router")
    access: AccessParams = Field(
        default_factory=AccessParams,
        description="who may claim a class, a lane, a deadline or a service tier (policies.path.access); none: nobody",
    )

    @model_validator(mode="after")
    def _cross_checks(self) -> ModeshiftConfig:
        problems = list(_cross_problems(self))
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, problems)
        return self


CROSS_FIELD = "cross_field"  # in a cross-field problem's context: configs.loader reports them with field errors


def _problem(loc: tuple[str | int, ...], value: Any, kind: str, message: str) -> InitErrorDetails:
    return InitErrorDetails(type=PydanticCustomError(kind, message, {CROSS_FIELD: True}), loc=loc, input=value)


def _cross_problems(cfg: ModeshiftConfig) -> Iterator[InitErrorDetails]:
    lanes = sorted(cfg.lanes)
    known_lanes = ", ".join(lanes)
    for mode, weights in cfg.modes.items():
        for lane, weight in weights.items():
            if lane not in cfg.lanes:
                yield _problem(("modes", mode, lane), weight, "unknown_lane", f"no lane {lane!r}; lanes: {known_lanes}")
        total = math.fsum(weights.values())
        if abs(total - 1.0) > WEIGHT_SUM_TOLERANCE:
            yield _problem(("modes", mode), weights, "weight_sum", f"weights sum to {total:g}; they must sum to 1")
    known_modes = ", ".join(sorted(cfg.modes))
    if cfg.initial_mode not in cfg.modes:
        yield _problem(("initial_mode",), cfg.initial_mode, "unknown_mode", f"no such mode; modes: {known_modes}")
    for path, kind, name in cfg.policy.params.references():
        known = cfg.modes if kind == "mode" else cfg.lanes
        if name not in known:
            listing = known_modes if kind == "mode" else known_lanes
            yield _problem(("policy", "params", *path), name, f"unknown_{kind}", f"no such {kind}; {kind}s: {listing}")
    seen_paths: set[str] = set()
    for i, route in enumerate(cfg.routes):
        if route.path in seen_paths:
            yield _problem(("routes", i, "path"), route.path, "duplicate_route", "another route has this path")
        seen_paths.add(route.path)
        if route.pin is not None and route.pin not in cfg.lanes:
            yield _problem(("routes", i, "pin"), route.pin, "unknown_lane", f"no such lane; lanes: {known_lanes}")
    known_classes = ", ".join(sorted({*BUILT_IN, *cfg.objectives}))
    for i, route in enumerate(cfg.routes):
        if route.traffic_class is not None and route.traffic_class not in {*BUILT_IN, *cfg.objectives}:
            yield _problem(
                ("routes", i, "class"),
                route.traffic_class,
                "unknown_class",
                f"no objective for this class; declare it under objectives (classes: {known_classes})",
            )
    for path, kind, name in cfg.access.names():
        if kind == CLASS and name not in {*BUILT_IN, *cfg.objectives}:
            yield _problem(("access", *path), name, "unknown_class", f"no such class; classes: {known_classes}")
        elif kind != CLASS and name not in live_lanes(cfg):
            yield _problem(("access", *path), name, "unknown_lane", f"no such live lane; lanes: {known_lanes}")
    yield from _batch_api_problems(cfg, known_lanes)
    for lane_name, lane_config in cfg.lanes.items():
        if lane_config.autoscale is not None and lane_config.batch_api is not None:
            yield _problem(
                ("lanes", lane_name, "autoscale"),
                "autoscale",
                "batch_api_autoscale",
                "a batch_api lane is the provider's capacity: nothing to scale",
            )
    if cfg.jobs.lane is not None and cfg.jobs.lane not in cfg.lanes:
        yield _problem(("jobs", "lane"), cfg.jobs.lane, "unknown_lane", f"no such lane; lanes: {known_lanes}")
    if cfg.server.listen == cfg.server.admin_listen:
        yield _problem(
            ("server", "admin_listen"), cfg.server.admin_listen, "shared_port", "the admin API needs its own address"
        )


def _batch_api_problems(cfg: ModeshiftConfig, known_lanes: str) -> Iterator[InitErrorDetails]:
    """A provider batch lane takes jobs only: no mode weighs it, no route pins it, and it has a lane to fall back on."""
    for name, lane in cfg.lanes.items():
        if lane.batch_api is None:
            continue
        if lane.batching is not None:
            yield _problem(
                ("lanes", name, "batching"),
                "batching",
                "batch_api_batching",
                "a batch_api lane gathers batch files itself; remove batching",
            )
        fallback = lane.batch_api.fallback
        others = [other for other, o in cfg.lanes.items() if other != name and o.batch_api is None]
        if fallback is not None and fallback not in others:
            yield _problem(
                ("lanes", name, "batch_api", "fallback"),
                fallback,
                "unknown_lane",
                f"the fallback must be another lane that is not a batch_api lane; lanes: {known_lanes}",
            )
        elif not others:
            yield _problem(
                ("lanes", name, "batch_api"),
                name,
                "no_fallback",
                "a batch_api lane needs another lane to run expired and late lines on",
            )
        for mode, weights in cfg.modes.items():
            if weights.get(name, 0) > 0:
                yield _problem(
                    ("modes", mode, name),
                    weights[name],
                    "batch_api_weight",
                    f"lane {name!r} is a provider batch lane: it takes jobs (Prefer: respond-async, /v1/batches) "
                    "only, never live requests",
                )
        for i, route in enumerate(cfg.routes):
            if route.pin == name:
                yield _problem(
                    ("routes", i, "pin"),
                    name,
                    "batch_api_pin",
                    f"lane {name!r} is a provider batch lane: it takes jobs only, a route cannot pin it",
                )


def live_lanes(cfg: ModeshiftConfig) -> list[str]:
    """The lanes that take live requests (all but the provider batch lanes), in config order."""
    return [name for name, lane in cfg.lanes.items() if lane.batch_api is None]


def fallback_lane(cfg: ModeshiftConfig, lane: str) -> str:
    """Where a provider batch lane's expired, failed-over and late lines run: its `fallback`, or the first live lane."""
    params = cfg.lanes[lane].batch_api
    assert params is not None
    return params.fallback or live_lanes(cfg)[0]
