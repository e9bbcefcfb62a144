"""`modeshift profile` against a loopback server of known speed."""

import asyncio

import pytest
from aiohttp import web

from router.profile import Plan, ProfileFailed, build_lane, measure, write_lane
from simulator.service import load_service_model

BASE_S, PER_ITEM_S, AT_ONCE = 0.010, 0.002, 2


@pytest.fixture
async def backend():
    slots = asyncio.Semaphore(AT_ONCE)

    async def embeddings(request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("input") == ["refuse"]:
            return web.json_response({"error": "no"}, status=400)
        n = len(body["input"])
        async with slots:
            await asyncio.sleep(BASE_S + PER_ITEM_S * n)
        tokens = sum(len(t.split()) for t in body["input"])
        return web.json_response({"data": [{"embedding": [0.0]}] * n, "usage": {"prompt_tokens": tokens}})

    app = web.Application()
    app.router.add_post("/v1/embeddings", embeddings)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/v1/embeddings"
    await runner.cleanup()


async def test_profile_recovers_the_servers_speed_and_concurrency(backend, tmp_path):
    plan = Plan(url=backend, batch_sizes=(1, 4, 8, 16), concurrency=(1, 2, 4), calls=5)
    points, rates = await measure(plan)
    lane = build_lane(points, rates)
    # Timer slack adds a little to every call: the base absorbs it.
    assert lane.latency.per_item_s == pytest.approx(PER_ITEM_S, rel=0.3)
    assert BASE_S <= lane.latency.base_s < BASE_S + 0.006
    assert lane.concurrency == AT_ONCE
    assert rates[2] > 1.5 * rates[1] and rates[4] < 1.3 * rates[2]

    path = tmp_path / "service.yaml"
    write_lane(path, "realtime", lane, backend)
    write_lane(path, "batch", lane, backend)
    model = load_service_model(path)  # the file reads back through the loader, units and all
    assert set(model.lanes) == {"realtime", "batch"}
    assert model.lanes["realtime"].latency.per_item_s == pytest.approx(lane.latency.per_item_s, rel=1e-4)
    assert backend in model.source


async def test_a_failing_call_stops_the_profile(backend, monkeypatch):
    import router.profile as profile

    monkeypatch.setattr(profile, "body_for", lambda plan, size, rng: ({"input": ["refuse"]}, 1))
    with pytest.raises(ProfileFailed, match="answered 400"):
        await measure(Plan(url=backend, batch_sizes=(1,), concurrency=(1,), calls=1))
