"""Real aiohttp upstreams and a real router on loopback, plus a fake clock.

`upstream(handler)` starts an aiohttp server on 127.0.0.1 with any free port
running `handler(request)`; `start_router(config)` starts the data plane and
the admin API on free ports, with the control loop driven by a FakeClock
(`router.tick()` after `clock.advance(s)`), so no test waits for a timer.
The pieces they are made of are in tests/router/helpers.py.
"""

from __future__ import annotations

import aiohttp
import pytest

from configs import ModeshiftConfig
from router.server import RunningRouter, runtime_for
from tests.router.helpers import TOKEN, FakeClock, Handler, RouterUnderTest, Upstream, echo
from tests.standins.provider import ProviderStandIn


@pytest.fixture
async def upstream():
    started: list[Upstream] = []

    async def start(handler: Handler = echo) -> Upstream:
        server = Upstream(handler)
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


@pytest.fixture
async def provider():
    """The OpenAI and Anthropic stand-in (tests/standins/provider.py) on a free loopback port."""
    stand_in = ProviderStandIn()
    await stand_in.start()
    yield stand_in
    await stand_in.stop()


@pytest.fixture
async def start_router(monkeypatch):
    monkeypatch.setenv("MODESHIFT_TEST_TOKEN", TOKEN)
    started: list[RunningRouter] = []

    async def start(config: ModeshiftConfig, *, config_path=None) -> RouterUnderTest:
        clock = FakeClock()
        router = RunningRouter(runtime_for(config, config_path=config_path, clock=clock))
        await router.start(data=("127.0.0.1", 0), admin=("127.0.0.1", 0), ticking=False)
        started.append(router)
        return RouterUnderTest(router, clock)

    yield start
    for router in started:
        await router.stop()


@pytest.fixture
async def client():
    async with aiohttp.ClientSession() as session:
        yield session
