"""The admin API, on its own listener (server.admin_listen), never the data port.

Every request needs `Authorization: Bearer <token>`, the token being the value
of the environment variable the config names (server.admin_token_env); with
the variable unset, the admin API answers 401 to everyone and says so. The
one exception is the status page's HTML at `/`, which holds no data: its
script asks for the token (or reads it from the URL's `#token=` fragment,
which browsers never send) and calls the API with it.

    GET  /           the status page (router/admin/status_page.html)
    GET  /status     mode, weights, transition, per-lane figures and upstreams, each class's objective and
                     attainment, recent decisions
    GET  /history    per-lane rate, latency, cost and weight, one sample per tick (router.telemetry.history)
    GET  /decisions  the decision audit log, JSON Lines, oldest first (?limit=N, ?kind=A,B)
    GET  /metrics    the same figures for Prometheus (router.telemetry.prometheus)
    GET  /capacity   per autoscaled lane: desired, ready and starting replicas, the raw recommendation, why
    PUT  /lanes/{lane}/upstreams
                     {"upstreams": ["http://10.0.0.7:8000", ...]}: the lane's replicas from now on, for an
                     orchestrator without DNS (kept ones keep their state, calls in flight on removed ones finish;
                     until the next reload, which reads the file's again)
    POST /mode       {"mode": "batch", "gradual": true, "reason": "..."}
    POST /pause      stop moving (the rollback guard stays armed)
    POST /resume
    POST /rollback   back to the weights before the last transition
    POST /reload     read the config file again; an invalid one is refused with its error lines
    GET  /v1/jobs/{id}, /v1/files[/{id}[/content]], /v1/batches[/{id}]
                     every tenant's stored objects, with their owner (the data plane shows each its own)
    GET  /v1/provider_batches
                     the batches a provider batch lane made at its provider: status, lines, ids, polls

A command the controller refuses (already in that mode, nothing to roll
back) answers 409 with the reason.
"""

from __future__ import annotations

import hmac
import json
import math
import os
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from configs import ConfigError
from configs.schema import check_http_url
from policies.control import stream_health
from policies.control.actions import Command, CommandRejected, Force, Pause, Resume, Rollback, plain
from policies.control.snapshot import Snapshot
from router.errors import CommandFailed, ProxyError, bad_request
from router.runtime import Runtime

RECENT_DECISIONS = 50
_RUNTIME = web.AppKey("runtime", Runtime)
_PAGE = resources.files("router.admin").joinpath("status_page.html").read_bytes()


class _ModeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: str
    gradual: bool = True
    reason: str = "admin API"


class _UpstreamsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    upstreams: list[str]


class _ReasonBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = "admin API"


_Body = TypeVar("_Body", bound=BaseModel)
_Number = TypeVar("_Number", int, float)


def _error(status: int, kind: str, message: str, **extra: Any) -> web.Response:
    body = ProxyError(status, kind, message).body(None)
    body["error"].update(extra)
    return web.json_response(body, status=status, dumps=_dumps)


def _dumps(value: Any) -> str:
    return json.dumps(plain(value), default=str)


@web.middleware
async def _authorize(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.path == "/" and request.method == "GET":
        return await handler(request)  # the page's HTML only; its data needs the token
    runtime = request.app[_RUNTIME]
    variable = runtime.state.config.server.admin_token_env
    token = os.environ.get(variable, "")
    if not token:
        return _error(401, "unauthorized", f"the admin API is off: set the environment variable {variable}")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        return _error(401, "unauthorized", f"send 'Authorization: Bearer <token>' with the value of ${variable}")
    try:
        return await handler(request)
    except web.HTTPException as exc:
        return _error(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason)
    except ProxyError as exc:
        return exc.response(None)


async def _read(request: web.Request, model: type[_Body]) -> _Body:
    raw = await request.read()
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        raise bad_request(f"invalid JSON body: {problems}") from None


def _lane_figures(snapshot: Snapshot) -> dict[str, dict[str, Any]]:
    return {name: fig.numbers() for name, fig in snapshot.lanes.items()}


def _objectives(snapshot: Snapshot) -> dict[str, dict[str, Any]]:
    """Each class over the metrics window: its objective and how well it is kept (None without requests)."""
    window = stream_health.windows(snapshot.outcomes)
    out = {}
    for name, reading in stream_health.readings(window, snapshot.objectives).items():
        objective = reading.objective
        out[name] = {
            "latency_s": None if math.isinf(objective.latency_s) else objective.latency_s,
            "wanted": objective.wanted,
            "error_budget": objective.error_budget,
            "priority": objective.priority,
            "requests": reading.requests,
            "attainment": reading.attainment if reading.requests else None,
            "errors": reading.errors,
        }
    return out


def status(runtime: Runtime) -> dict[str, Any]:
    state = runtime.state
    now = runtime.now_s()
    snapshot = state.control.snapshot(now)
    view = snapshot.control
    t = view.transition
    lanes = _lane_figures(snapshot)
    for name, lane in state.lanes.items():
        lanes[name].update(weight=view.weights[name], **lane.describe(now))
    return {
        "mode": view.mode,  # None while a transition is under way: `heading_to` says where it goes
        "heading_to": t.to_mode if t is not None else None,
        "state": view.state,
        "weights": view.weights.as_dict(),
        "transition": None
        if t is None
        else {
            "from_mode": t.from_mode,
            "to_mode": t.to_mode,
            "step": t.step_index + 1,
            "steps": t.step_count,
            "fraction": t.fraction,
            "cause": t.cause,
            "running_s": now - t.started_s,
        },
        "holding": None
        if view.holding_target is None
        else {"target": view.holding_target, "for_s": now - (view.holding_since_s or now)},
        "cooldown_left_s": max((view.cooldown_until_s or now) - now, 0.0),
        "arrival_rate_per_s": snapshot.arrival_rate_per_s,
        "lanes": lanes,
        "objectives": _objectives(snapshot),
        "decisions": runtime.decisions.recent(RECENT_DECISIONS),
        "config": {"path": str(runtime.config_path) if runtime.config_path else None, "reloads": runtime.reloads},
        "cluster": runtime.cluster.view() if runtime.cluster is not None else None,
        "provider": _provider(runtime),
        "uptime_s": now - runtime.started_s,
        "now_s": now,
    }


def _provider(runtime: Runtime) -> dict[str, Any] | None:
    """What a provider batch lane's bridge did, its fallbacks at list price first (router.jobs.provider.bridge)."""
    bridge = runtime.jobs.bridge if runtime.jobs is not None else None
    return bridge.counts.view() if bridge is not None else None


def capacity(runtime: Runtime) -> dict[str, Any]:
    """What the capacity rule wants of each autoscaled lane (policies.control.capacity), for an autoscaler or a
    person."""
    planner = runtime.state.control.capacity
    if planner is None:
        return {"lanes": {}}
    lanes = {}
    for lane, params in planner.autoscale.items():
        last = planner.last.get(lane)
        lanes[lane] = {
            "desired": planner.desired[lane],
            "ready": last.ready if last is not None else None,
            "starting": last.starting if last is not None else None,
            "recommended": last.recommended if last is not None else None,
            "reason": last.reason if last is not None else "no tick yet",
            "min": params.min,
            "max": params.max,
            "concurrency": planner.concurrency[lane],
        }
    return {"lanes": lanes}


async def _upstreams(request: web.Request) -> web.Response:
    body = await _read(request, _UpstreamsBody)
    runtime = request.app[_RUNTIME]
    name = request.match_info["lane"]
    lane = runtime.state.lanes.get(name)
    if lane is None:
        return _error(404, "not_found", f"no lane {name!r}; lanes: {', '.join(runtime.state.lanes)}")
    if lane.config.discovery is not None:
        return _error(
            409, "discovered", f"lane {name!r} finds its upstreams by DNS (discovery:); they are not set here"
        )
    for url in body.upstreams:
        try:
            check_http_url(url)
        except ValueError as exc:
            raise bad_request(f"upstreams: {exc}") from None
    try:
        added, removed = lane.pool.replace(body.upstreams)
    except ValueError as exc:
        raise bad_request(f"upstreams: {exc}") from None
    return web.json_response(
        {"lane": name, "upstreams": [u.base for u in lane.pool.upstreams], "added": added, "removed": removed},
        dumps=_dumps,
    )


async def _capacity(request: web.Request) -> web.Response:
    return web.json_response(capacity(request.app[_RUNTIME]), dumps=_dumps)


async def _status(request: web.Request) -> web.Response:
    return web.json_response(status(request.app[_RUNTIME]), dumps=_dumps)


async def _answer(runtime: Runtime, command: Command) -> web.Response:
    """What the controller did with `command` (in a cluster, the leader's, wherever it runs); 409 if refused."""
    try:
        records = await runtime.run_command(command)
    except CommandFailed as exc:  # in a cluster: what truly became of it
        return _error(503, "no_leader", str(exc))
    refused = next((r for r in records if r.get("kind") == CommandRejected.__name__), None)
    if refused is not None:
        return _error(409, "command_rejected", refused["reason"])
    return web.json_response({"actions": records}, dumps=_dumps)


async def _mode(request: web.Request) -> web.Response:
    body = await _read(request, _ModeBody)
    runtime = request.app[_RUNTIME]
    modes = runtime.state.config.modes
    if body.mode not in modes:  # a bad request, not a refusal: nothing about the controller's state says no
        raise bad_request(f"mode {body.mode!r} is not one of the config's modes: {', '.join(sorted(modes))}")
    return await _answer(runtime, Force(mode=body.mode, gradual=body.gradual, reason=body.reason))


def _simple(command: type) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        body = await _read(request, _ReasonBody)
        return await _answer(request.app[_RUNTIME], command(reason=body.reason))

    return handle


async def _reload(request: web.Request) -> web.Response:
    """Read the config file again (in a cluster: here now, then every other replica its own, at its next tick)."""
    runtime = request.app[_RUNTIME]
    try:
        record = await runtime.reload_everywhere()
    except ConfigError as exc:
        return _error(422, "invalid_config", "the new config is invalid; the old one keeps serving", lines=exc.lines)
    return web.json_response(record, dumps=_dumps)


async def _stored(request: web.Request) -> web.StreamResponse:
    jobs = request.app[_RUNTIME].jobs
    if jobs is None:
        return _error(404, "not_found", "jobs are off (jobs.enabled)")
    return await jobs.handle_admin(request)


async def _page(request: web.Request) -> web.Response:
    return web.Response(body=_PAGE, content_type="text/html", headers={"Cache-Control": "no-store"})


async def _history(request: web.Request) -> web.Response:
    runtime = request.app[_RUNTIME]
    after = _number(request, "after", float)
    return web.json_response({"now_s": runtime.now_s(), "samples": runtime.history.after(after)}, dumps=_dumps)


async def _decisions(request: web.Request) -> web.Response:
    """The audit log in the simulator's format: one `Action.as_record()` per line."""
    runtime = request.app[_RUNTIME]
    limit = _number(request, "limit", int)
    if limit is not None and limit < 1:
        raise bad_request(f"limit must be a positive whole number, got {limit}")
    kinds = {k for k in request.query.get("kind", "").split(",") if k}
    records = [r for r in runtime.decisions.recent() if not kinds or r.get("kind") in kinds]
    if limit is not None:
        records = records[-limit:]
    body = "".join(_dumps(record) + "\n" for record in records)
    return web.Response(text=body, content_type="application/x-ndjson")


def _number(request: web.Request, name: str, kind: type[_Number]) -> _Number | None:
    """The query parameter `name` as `kind` (int or float); None when it is not given; 400 when it is not one."""
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        return kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise bad_request(f"query parameter {name} must be {what}, got {raw!r}") from None


async def _metrics(request: web.Request) -> web.Response:
    from router.telemetry.prometheus import CONTENT_TYPE, exposition

    body = exposition(request.app[_RUNTIME].figures)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def admin_app(runtime: Runtime) -> web.Application:
    app = web.Application(middlewares=[_authorize])
    app[_RUNTIME] = runtime
    app.router.add_get("/", _page)
    app.router.add_get("/status", _status)
    app.router.add_get("/history", _history)
    app.router.add_get("/decisions", _decisions)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/capacity", _capacity)
    app.router.add_put("/lanes/{lane}/upstreams", _upstreams)
    app.router.add_post("/mode", _mode)
    app.router.add_post("/pause", _simple(Pause))
    app.router.add_post("/resume", _simple(Resume))
    app.router.add_post("/rollback", _simple(Rollback))
    app.router.add_post("/reload", _reload)
    for path in (
        "/v1/jobs/{id}",
        "/v1/files",
        "/v1/files/{id}",
        "/v1/files/{id}/content",
        "/v1/batches",
        "/v1/batches/{id}",
        "/v1/provider_batches",
    ):
        app.router.add_get(path, _stored)
    return app
