"""`modeshift profile` against a loopback server of known speed."""

import asyncio

import aiohttp
import pytest
from aiohttp import web

from commands.profile import Plan, ProfileFailed, build_lane, measure, measure_hop, write_lane
from router.headers import BATCH_HEADER, MODE_HEADER
from simulator.service import load_service_model

BASE_S, PER_ITEM_S, PER_WORD_S, AT_ONCE = 0.010, 0.002, 0.0001, 2
HOP_S = 0.008


async def _serve(app: web.Application):
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


@pytest.fixture
async def backend():
    slots = asyncio.Semaphore(AT_ONCE)

    async def embeddings(request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("input") == ["refuse"]:
            return web.json_response({"error": "no"}, status=400)
        n = len(body["input"])
        tokens = sum(len(t.split()) for t in body["input"])
        async with slots:
            await asyncio.sleep(BASE_S + PER_ITEM_S * n + PER_WORD_S * tokens)
        return web.json_response({"data": [{"embedding": [0.0]}] * n, "usage": {"prompt_tokens": tokens}})

    app = web.Application()
    app.router.add_post("/v1/embeddings", embeddings)
    runner, port = await _serve(app)
    yield f"http://127.0.0.1:{port}/v1/embeddings"
    await runner.cleanup()


def router_before(backend: str, *, merges: bool = False):
    """A stand-in router: HOP_S of its own, then the backend; it refuses calls without the lane pin."""

    async def forward(request: web.Request) -> web.Response:
        if request.headers.get(MODE_HEADER) != "realtime":
            return web.json_response({"error": "not pinned"}, status=400)
        await asyncio.sleep(HOP_S)
        async with aiohttp.ClientSession() as session, session.post(backend, data=await request.read()) as answer:
            body = await answer.read()
        return web.Response(body=body, headers={BATCH_HEADER: "b1"} if merges else {})

    app = web.Application()
    app.router.add_post("/v1/embeddings", forward)
    return app


async def test_profile_recovers_the_servers_speed_and_concurrency(backend, tmp_path):
    plan = Plan(url=backend, batch_sizes=(1, 4, 8, 16), lengths=(4, 32, 128), concurrency=(1, 2, 4), calls=5)
    points, rates = await measure(plan)
    lane = build_lane(points, rates)
    # Timer slack adds a little to every call: the base absorbs it.
    assert lane.latency.per_item_s == pytest.approx(PER_ITEM_S, rel=0.3)
    assert lane.latency.per_input_token_s == pytest.approx(PER_WORD_S, rel=0.3)
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
    import commands.profile as profile

    monkeypatch.setattr(profile, "body_for", lambda *_: ({"input": ["refuse"]}, 1))
    with pytest.raises(ProfileFailed, match="answered 400"):
        await measure(Plan(url=backend, batch_sizes=(1,), concurrency=(1,), calls=1))


async def test_the_hop_is_what_the_router_adds_and_goes_into_the_model(backend, tmp_path):
    runner, port = await _serve(router_before(backend))
    try:
        plan = Plan(url=backend, via=f"http://127.0.0.1:{port}/v1/embeddings", calls=6)
        hop_s = await measure_hop(plan, "realtime")
    finally:
        await runner.cleanup()
    # The stand-in opens a connection per call too: a little over HOP_S.
    assert HOP_S <= hop_s < HOP_S + 0.01

    path = tmp_path / "service.yaml"
    lane = build_lane(*await measure(Plan(url=backend, batch_sizes=(1, 2), lengths=(), concurrency=(1,), calls=3)))
    write_lane(path, "realtime", lane, backend, hop_s=hop_s)
    write_lane(path, "batch", lane, backend)  # a later lane keeps the hop
    assert load_service_model(path).hop_s == pytest.approx(hop_s, rel=1e-4)


async def test_a_hop_through_a_merging_lane_is_refused(backend):
    runner, port = await _serve(router_before(backend, merges=True))
    try:
        with pytest.raises(ProfileFailed, match="micro-batched"):
            await measure_hop(Plan(url=backend, via=f"http://127.0.0.1:{port}/v1/embeddings", calls=1), "realtime")
    finally:
        await runner.cleanup()
