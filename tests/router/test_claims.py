"""Claims through a real router: a class, a pin, a deadline and a service tier count only where the config grants them.

Issue 29, item 1: with no `access:` at all, any client could take the most
urgent class or the costliest lane by a header; a tenant that kept 24
requests open with `X-Modeshift-Priority: pinned` got 97.5% of another
tenant's requests refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import json

import numpy as np
from aiohttp import web

from policies.control.objectives import PINNED, SWITCHABLE
from tests.router.helpers import two_lane_config, until

KEY = "sk-checkout-0123456789"
KEY_SHA256 = hashlib.sha256(KEY.encode()).hexdigest()
CLAIMS = {"X-Modeshift-Priority": "pinned", "X-Modeshift-Mode": "realtime", "X-Modeshift-Deadline-Ms": "1"}


def config(realtime: str, batch: str, access: dict, **overrides):
    """Batch mode in force, so a granted pin to realtime shows in the lane that answers; `access` whole."""
    return two_lane_config(
        [realtime],
        [batch],
        initial_mode="batch",
        policy={"type": "static", "params": {"mode": "batch"}},
        access={"everyone": {}, **access},
        **overrides,
    )


def classes_served(router) -> dict[str, int]:
    monitor = router.runtime.state.control.monitor
    served = {f"{c}/{lane}": w.since_start.completions for (c, lane), w in monitor.outcomes.items()}
    return {key: n for key, n in served.items() if n}


async def test_a_fresh_config_drops_every_claim_places_the_request_as_its_route_says_and_says_so(
    upstream, start_router, client
):
    realtime, batch = await upstream(), await upstream()
    router = await start_router(config(realtime.url, batch.url, access={}))
    async with client.get(f"{router.url}/x", headers=CLAIMS) as response:
        assert response.status == 200
        assert response.headers["X-Modeshift-Lane"] == "batch"  # the weights placed it, not the pin
        assert response.headers["X-Modeshift-Claim-Denied"] == "class, lane, deadline"
    assert classes_served(router) == {f"{SWITCHABLE}/batch": 1}
    async with client.get(f"{router.url}/x", headers={"X-Modeshift-Mode": "auto"}) as response:
        assert "X-Modeshift-Claim-Denied" not in response.headers  # auto claims nothing


async def test_a_denied_priority_tier_is_not_sent_upstream_either(upstream, start_router, client):
    seen: list[dict] = []

    async def chat(request: web.Request) -> web.Response:
        seen.append(await request.json())
        return web.json_response({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}})

    realtime, batch = await upstream(chat), await upstream(chat)
    routes = [{"path": "/v1/chat/completions", "protocol": "openai-chat"}]
    router = await start_router(config(realtime.url, batch.url, access={}, routes=routes))
    body = {"model": "m", "messages": [], "service_tier": "priority"}
    async with client.post(f"{router.url}/v1/chat/completions", json=body) as response:
        assert response.status == 200
        assert response.headers["X-Modeshift-Lane"] == "batch"
        assert response.headers["X-Modeshift-Claim-Denied"] == "tier"
    assert seen[0]["service_tier"] == "default"  # the provider bills what it is asked for


async def test_claims_that_ask_for_less_need_no_grant(upstream, start_router, client):
    realtime, batch = await upstream(), await upstream()
    objectives = {"bulk": {"priority": 3}, "urgent": {"priority": 0, "latency": "100ms"}}
    router = await start_router(config(realtime.url, batch.url, access={}, objectives=objectives))
    async with client.get(f"{router.url}/x", headers={"X-Modeshift-Priority": "bulk"}) as response:
        assert "X-Modeshift-Claim-Denied" not in response.headers
    async with client.get(f"{router.url}/x", headers={"X-Modeshift-Priority": "urgent"}) as response:
        assert response.headers["X-Modeshift-Claim-Denied"] == "class"
    assert classes_served(router) == {"bulk/batch": 1, f"{SWITCHABLE}/batch": 1}


async def test_a_named_credential_gets_what_it_was_granted_and_everyone_else_does_not(upstream, start_router, client):
    realtime, batch = await upstream(), await upstream()
    access = {"credentials": {"checkout": {"key_sha256": KEY_SHA256, "classes": [PINNED], "lanes": ["realtime"]}}}
    router = await start_router(config(realtime.url, batch.url, access=access))
    claims = {"X-Modeshift-Priority": "pinned", "X-Modeshift-Mode": "realtime"}
    async with client.get(f"{router.url}/x", headers={**claims, "Authorization": f"Bearer {KEY}"}) as response:
        assert response.headers["X-Modeshift-Lane"] == "realtime"
        assert "X-Modeshift-Claim-Denied" not in response.headers
    async with client.get(f"{router.url}/x", headers={**claims, "Authorization": "Bearer sk-other"}) as response:
        assert response.headers["X-Modeshift-Lane"] == "batch"
        assert response.headers["X-Modeshift-Claim-Denied"] == "class, lane"
    async with client.get(f"{router.url}/x", headers={**claims, "x-api-key": KEY}) as response:
        assert response.headers["X-Modeshift-Lane"] == "realtime"  # the key counts in any secret header
    assert classes_served(router) == {f"{PINNED}/realtime": 2, f"{SWITCHABLE}/batch": 1}


async def test_refuse_answers_an_ungranted_claim_with_a_json_403_and_sends_nothing_upstream(
    upstream, start_router, client
):
    realtime, batch = await upstream(), await upstream()
    router = await start_router(config(realtime.url, batch.url, access={"denied": "refuse"}))
    async with client.get(f"{router.url}/x", headers={"X-Modeshift-Mode": "realtime"}) as response:
        assert response.status == 403
        error = (await response.json())["error"]
        assert error["type"] == "claim_denied" and "lane" in error["message"]
        assert error["request_id"] == response.headers["X-Request-Id"]
    assert realtime.seen == [] and batch.seen == []


async def test_an_ungranted_tenant_claiming_everything_does_not_push_another_tenant_out(upstream, start_router, client):
    """Two tenants, one lane of 4 slots at 50 ms. B sends 20 req/s without headers; A keeps 24 requests open,
    once without claims and once claiming pinned, the real-time lane and the priority tier without a grant.
    B's refusals and p99 must be what they are without A's claims."""
    slots = asyncio.Semaphore(4)

    async def model(request: web.Request) -> web.Response:
        await request.read()
        async with slots:
            await asyncio.sleep(0.05)
        return web.json_response({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}})

    server = await upstream(model)
    lane = {"upstreams": [server.url], "max_in_flight": 4, "queue_depth": 64, "queue_timeout": "5s"}
    lanes = {"realtime": lane, "batch": lane}
    routes = [{"path": "/v1/chat/completions", "protocol": "openai-chat"}]
    objectives = {"switchable": {"latency": "2s", "percentile": 99}}
    router = await start_router(
        two_lane_config(
            [server.url], [server.url], lanes=lanes, routes=routes, objectives=objectives, access={"everyone": {}}
        )
    )
    url = f"{router.url}/v1/chat/completions"

    async def tenant_a(stop: asyncio.Event, claims: bool) -> None:
        headers = {**CLAIMS, "Authorization": "Bearer sk-a"} if claims else {"Authorization": "Bearer sk-a"}
        body = json.dumps({"model": "m", "messages": [], "service_tier": "priority" if claims else "auto"})

        async def one() -> None:
            while not stop.is_set():
                async with client.post(url, data=body, headers=headers) as response:
                    await response.read()

        await asyncio.gather(*(one() for _ in range(24)))

    async def tenant_b(count: int) -> tuple[list[float], int]:
        latencies, refused = [], 0
        loop = asyncio.get_running_loop()

        async def one() -> None:
            nonlocal refused
            started = loop.time()
            async with client.post(
                url, json={"model": "m", "messages": []}, headers={"Authorization": "Bearer sk-b"}
            ) as r:
                await r.read()
                if r.status == 503:
                    refused += 1
                else:
                    assert r.status == 200
                    latencies.append(loop.time() - started)

        sent = []
        for _ in range(count):
            sent.append(asyncio.ensure_future(one()))
            await asyncio.sleep(0.05)  # 20 req/s
        await asyncio.gather(*sent)
        return latencies, refused

    async def run(claims: bool) -> tuple[float, float, float]:
        stop = asyncio.Event()
        a = asyncio.ensure_future(tenant_a(stop, claims))
        lanes = router.runtime.state.lanes.values()
        await until(lambda: sum(lane.waiting + lane.window.in_flight for lane in lanes) >= 24)  # A's are in
        latencies, refused = await tenant_b(60)
        stop.set()
        await a
        within = sum(1 for s in latencies if s <= 2.0) / 60
        return float(np.percentile(latencies, 99)), refused / 60, within

    p99_calm, refused_calm, _ = await run(claims=False)
    p99, refused, within = await run(claims=True)
    assert refused_calm == 0 and refused <= 0.01, (refused_calm, refused)
    assert within >= 0.99, within
    # Honoured claims put B behind all of A's 24 (p99 4.4 s, about 9x, and 97% refused); dropped, B waits as
    # without them. The bound tells those apart with room for a loaded 2-core machine, where the two runs of
    # the same traffic have read 1.7x apart: the 10% of the issue is a figure for a quiet one, in the note.
    assert p99 <= 3.0 * p99_calm, (p99, p99_calm)
