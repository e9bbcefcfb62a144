"""Capacity through a real router: the replicas an autoscaled lane needs, in /capacity, /metrics and the log.

The upstream moves the router's fake clock by its service time on every
call, so the lane's measured service time is exact: 10 calls a second of
0.1 s each keep one server busy, and with 20% headroom and one call per
replica the lane needs two replicas.
"""

from __future__ import annotations

import json

from aiohttp import web

from tests.router.helpers import admin_headers, two_lane_config

SERVICE_S = 0.1


async def test_a_busy_lane_asks_for_replicas_and_says_so_where_an_autoscaler_looks(upstream, start_router, client):
    holder = {}

    async def model(request: web.Request) -> web.Response:
        holder["clock"].advance(SERVICE_S)  # the call takes 0.1 s of the router's clock
        return web.json_response({})

    server = await upstream(model)
    lanes = {
        "realtime": {
            "upstreams": [server.url],
            "replica": {"concurrency": 1},
            "autoscale": {"min": 1, "max": 6, "scale_up_hold": "0s", "scale_down_hold": "30s", "headroom": 0.2},
            "cost": {"per_replica_hour": 4.0},
        },
        "batch": {"upstreams": [server.url]},
    }
    router = await start_router(two_lane_config([server.url], [server.url], lanes=lanes))
    holder["clock"] = router.clock
    async with client.get(f"{router.admin_url}/capacity", headers=admin_headers()) as response:
        before = (await response.json())["lanes"]["realtime"]
    assert before["desired"] == 1 and before["reason"] == "no tick yet"
    for _ in range(40):  # back to back: 10 calls a second of the router's clock
        async with client.get(f"{router.url}/x") as response:
            assert response.status == 200
    actions = router.tick(advance_s=0.0)
    wanted = [a for a in actions if a.kind == "ReplicasWanted"]
    assert [(a.lane, a.was, a.replicas) for a in wanted] == [("realtime", 1, 2)]
    async with client.get(f"{router.admin_url}/capacity", headers=admin_headers()) as response:
        now = (await response.json())["lanes"]["realtime"]
    assert (now["desired"], now["ready"], now["starting"]) == (2, 1, 1)
    assert "req/s" in now["reason"]
    async with client.get(f"{router.admin_url}/metrics", headers=admin_headers()) as response:
        text = await response.text()
    assert 'modeshift_lane_replicas{lane="realtime",state="desired"} 2.0' in text
    assert 'modeshift_lane_replicas{lane="batch",state="ready"} 1.0' in text
    async with client.get(f"{router.admin_url}/decisions?kind=ReplicasWanted", headers=admin_headers()) as r:
        logged = [json.loads(line) for line in (await r.text()).splitlines()]
    assert [(d["lane"], d["replicas"]) for d in logged] == [("realtime", 2)]
    # The lane is paid per replica: one ready replica at $4 an hour over the window's span.
    figures = router.runtime.state.control.snapshot(router.clock()).lanes["realtime"]
    assert figures.span_s > 0 and abs(figures.cost_usd - 4.0 * figures.span_s / 3600) < 1e-12
    # A calm: nothing more arrives. The figure comes down once one replica has been enough for the down hold
    # (30 s), not before.
    lowered = []
    for second in range(1, 121):
        lowered += [(second, a) for a in router.tick(advance_s=1.0) if a.kind == "ReplicasWanted"]
    assert [(a.was, a.replicas) for _, a in lowered] == [(2, 1)]
    assert lowered[0][0] >= 30 and "below 2 for 30s" in lowered[0][1].reason


async def test_an_orchestrator_sets_a_lanes_replicas_through_the_admin_api(upstream, start_router, client):
    one, two = await upstream(), await upstream()
    router = await start_router(two_lane_config([one.url], [one.url]))
    url = f"{router.admin_url}/lanes/realtime/upstreams"
    async with client.put(url, json={"upstreams": [one.url, two.url]}, headers=admin_headers()) as response:
        assert response.status == 200
        assert (await response.json())["added"] == [two.url]
    for _ in range(6):
        async with client.get(f"{router.url}/x", headers={"X-Modeshift-Mode": "realtime"}) as response:
            assert response.status == 200
    assert one.seen and two.seen  # both take calls
    async with client.put(url, json={"upstreams": []}, headers=admin_headers()) as response:
        assert response.status == 400  # a lane with no replica could only refuse: kept as it is
    async with client.put(url, json={"upstreams": ["ftp://x"]}, headers=admin_headers()) as response:
        assert response.status == 400 and "http" in (await response.json())["error"]["message"]
    async with client.put(
        f"{router.admin_url}/lanes/nope/upstreams", json={"upstreams": [one.url]}, headers=admin_headers()
    ) as response:
        assert response.status == 404
    assert len(router.runtime.state.lanes["realtime"].pool.upstreams) == 2
