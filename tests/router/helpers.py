"""What the router's tests build with: loopback upstreams, a fake clock, configs, a router under test.

The fixtures that start and stop them are in tests/router/conftest.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from configs import ModeshiftConfig
from router.runtime import Runtime
from router.server import RunningRouter

TOKEN = "test-admin-token"
# The tests of routing, classes and tiers claim freely; tests/router/test_claims.py sets its own `access:`.
OPEN_ACCESS = {"everyone": {"classes": ["*"], "lanes": ["*"], "tiers": ["*"], "deadline": True}}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeClock:
    def __init__(self, now_s: float = 1000.0):
        self.now = now_s

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Timer:
    def __init__(self, when_s: float, callback: Callable[[], None]):
        self.when_s, self.callback, self.cancelled = when_s, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class SchedulingClock(FakeClock):
    """A fake clock that also keeps timers (a batch loop's), fired as virtual time passes."""

    def __init__(self, now_s: float = 0.0):
        super().__init__(now_s)
        self.timers: list[Timer] = []

    def call_at(self, when_s: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(when_s, callback)
        self.timers.append(timer)
        return timer

    def advance_firing(self, seconds: float) -> None:
        """Move on `seconds` and fire the timers now due that were not cancelled."""
        self.advance(seconds)
        due = [t for t in self.timers if t.when_s <= self.now and not t.cancelled]
        self.timers = [t for t in self.timers if t not in due]
        for timer in due:
            timer.callback()


@dataclass
class Upstream:
    """A loopback aiohttp server; `handler` may be swapped while it runs."""

    handler: Handler
    url: str = ""
    seen: list[web.Request] = field(default_factory=list)
    runner: web.AppRunner | None = None
    site: web.TCPSite | None = None
    down: bool = False
    busy: set[object] = field(default_factory=set)  # connections with a call in progress

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request)
        self.busy.add(request.protocol)
        try:
            response = await self.handler(request)
        finally:
            self.busy.discard(request.protocol)
        if self.down:
            response.force_close()  # the last answer on this connection: the next call must connect anew
        return response

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self.runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        await self._listen(port)
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def _listen(self, port: int) -> None:
        assert self.runner is not None
        self.site = web.TCPSite(self.runner, "127.0.0.1", port)
        await self.site.start()

    async def go_down(self) -> None:
        """Refuse connections from now on; calls already taken are answered, then their connections close."""
        assert self.runner is not None and self.site is not None and self.runner.server is not None
        self.down = True
        await self.site.stop()
        for connection in self.runner.server.connections:
            if connection not in self.busy:
                connection.force_close()  # a busy one closes after its answer (see _dispatch)

    async def come_up(self) -> None:
        """Take connections again, on the same port."""
        self.down = False
        await self._listen(int(self.url.rsplit(":", 1)[1]))

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


async def echo(request: web.Request) -> web.Response:
    """Answer with what arrived: method, path and query, headers, body size."""
    body = await request.read()
    return web.json_response(
        {"method": request.method, "path": request.path_qs, "headers": dict(request.headers), "size": len(body)}
    )


def two_lane_config(realtime: list[str], batch: list[str], **overrides: Any) -> ModeshiftConfig:
    """A realtime and a batch lane, three modes, a static policy; `overrides` update sections."""
    return ModeshiftConfig.model_validate(two_lane_raw(realtime, batch, **overrides), context={})


def two_lane_raw(realtime: list[str], batch: list[str], **overrides: Any) -> dict[str, Any]:
    """The config of `two_lane_config` as YAML would hold it."""
    raw: dict[str, Any] = {
        "server": {"listen": "127.0.0.1:1", "admin_listen": "127.0.0.1:2", "admin_token_env": "MODESHIFT_TEST_TOKEN"},
        "lanes": {
            "realtime": {"upstreams": realtime, "timeout": "10s"},
            "batch": {"upstreams": batch, "timeout": "10s"},
        },
        "modes": {
            "realtime": {"realtime": 1.0},
            "hybrid": {"realtime": 0.5, "batch": 0.5},
            "batch": {"batch": 1.0},
        },
        "initial_mode": "realtime",
        "policy": {"type": "static", "params": {"mode": "realtime"}},
        "switching": {"hold": "0s", "cooldown": "0s", "step": "1s", "min_samples": 5, "steps": [0.5, 1.0]},
        "metrics": {"window": "60s", "slot": "1s"},
        "access": OPEN_ACCESS,
    }
    for section, value in overrides.items():
        # One level deep: `server={"max_body_bytes": "1KiB"}` changes one key, the rest stays.
        raw[section] = {**raw[section], **value} if isinstance(value, dict) and section in raw else value
    return raw


@dataclass
class RouterUnderTest:
    router: RunningRouter
    clock: FakeClock

    @property
    def runtime(self) -> Runtime:
        return self.router.runtime

    @property
    def url(self) -> str:
        host, port = self.router.data_address
        return f"http://{host}:{port}"

    @property
    def admin_url(self) -> str:
        host, port = self.router.admin_address
        return f"http://{host}:{port}"

    def tick(self, advance_s: float = 1.0) -> list:
        self.clock.advance(advance_s)
        return self.runtime.tick()


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait for `condition` (something the router or an upstream did), never for a fixed time."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.005)


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


async def gather_limited(n: int, concurrency: int, make: Callable[[int], Awaitable[Any]]) -> list[Any]:
    """Run make(0..n-1) with at most `concurrency` at once; results in order."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> Any:
        async with gate:
            return await make(i)

    return await asyncio.gather(*(one(i) for i in range(n)))
