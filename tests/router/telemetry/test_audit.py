"""The admin API's audit and history views: GET /decisions, GET /history, and the status page's HTML."""

from __future__ import annotations

import json

from policies.control.actions import Force
from tests.router.helpers import admin_headers, two_lane_config


async def decisions(client, router, query: str = "") -> list[dict]:
    async with client.get(f"{router.admin_url}/decisions{query}", headers=admin_headers()) as response:
        assert response.status == 200 and response.content_type == "application/x-ndjson"
        return [json.loads(line) for line in (await response.text()).splitlines()]


async def test_decisions_are_the_controllers_actions_as_json_lines(upstream, start_router, client):
    server = await upstream()
    router = await start_router(two_lane_config([server.url], [server.url]))
    taken = router.runtime.command(Force(mode="batch", gradual=False, reason="test"))
    for _ in range(3):
        async with client.get(f"{router.url}/a") as response:
            assert response.status == 200
        taken += router.tick()
    taken += router.runtime.command(Force(mode="realtime", gradual=True, reason="back"))
    kinds = [a.kind for a in taken]
    assert {"TransitionStarted", "TransitionCompleted", "SetWeights"} <= set(kinds)
    assert await decisions(client, router) == [json.loads(json.dumps(a.as_record())) for a in taken]
    assert [d["kind"] for d in await decisions(client, router, "?kind=TransitionStarted,TransitionCompleted")] == [
        k for k in kinds if k in ("TransitionStarted", "TransitionCompleted")
    ]
    last_two = await decisions(client, router, "?limit=2")
    assert last_two == [json.loads(json.dumps(a.as_record())) for a in taken[-2:]]


async def test_decisions_refuse_a_bad_limit_with_a_clear_error(upstream, start_router, client):
    server = await upstream()
    router = await start_router(two_lane_config([server.url], [server.url]))
    for bad in ("0", "many"):
        async with client.get(f"{router.admin_url}/decisions?limit={bad}", headers=admin_headers()) as response:
            assert response.status == 400
            assert "limit" in (await response.json())["error"]["message"]


async def test_history_has_one_sample_per_tick_with_what_each_lane_did(upstream, start_router, client):
    server = await upstream()
    config = two_lane_config(
        [server.url], [server.url], lanes={"realtime": {"upstreams": [server.url], "cost": {"per_request": 0.01}}}
    )
    router = await start_router(config)
    router.tick()
    for _ in range(4):
        async with client.get(f"{router.url}/a") as response:
            assert response.status == 200
    router.tick(2.0)
    router.tick(1.0)
    async with client.get(f"{router.admin_url}/history", headers=admin_headers()) as response:
        history = await response.json()
    busy, quiet = history["samples"]
    assert busy["lanes"]["realtime"]["rate_per_s"] == 2.0  # 4 answers over 2 s
    assert abs(busy["lanes"]["realtime"]["cost_per_s"] - 0.02) < 1e-12
    assert busy["lanes"]["realtime"]["p95_ms"] >= 0 and busy["lanes"]["realtime"]["weight"] == 1.0
    assert busy["lanes"]["batch"]["rate_per_s"] == 0 and busy["lanes"]["batch"]["p95_ms"] is None
    assert quiet["lanes"]["realtime"]["rate_per_s"] == 0
    async with client.get(f"{router.admin_url}/history?after={busy['at_s']}", headers=admin_headers()) as response:
        assert [s["at_s"] for s in (await response.json())["samples"]] == [quiet["at_s"]]


async def test_the_status_page_html_needs_no_token_and_holds_no_data(upstream, start_router, client):
    server = await upstream()
    router = await start_router(two_lane_config([server.url], [server.url]))
    async with client.get(f"{router.admin_url}/") as response:
        assert response.status == 200 and response.content_type == "text/html"
        page = await response.text()
    assert "<script>" in page and "/status" in page and "realtime" not in page
