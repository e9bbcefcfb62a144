"""GET /metrics on the admin listener, scraped and parsed with prometheus-client's own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from policies.control.actions import Force
from tests.router.helpers import admin_headers, two_lane_config


async def scrape(client, router) -> dict:
    async with client.get(f"{router.admin_url}/metrics", headers=admin_headers()) as response:
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def test_metrics_count_requests_by_route_lane_and_status(upstream, start_router, client):
    realtime, batch = await upstream(), await upstream()
    config = two_lane_config(
        [realtime.url],
        [batch.url],
        lanes={"realtime": {"upstreams": [realtime.url], "cost": {"per_request": 0.001}}},
        routes=[{"path": "/v1", "protocol": "http"}],
    )
    router = await start_router(config)
    for _ in range(3):
        async with client.get(f"{router.url}/v1/a") as response:
            assert response.status == 200
    async with client.get(f"{router.url}/v1/b", headers={"X-Modeshift-Mode": "batch"}) as response:
        assert response.status == 200
    async with client.get(f"{router.url}/elsewhere") as response:
        assert response.status == 404
    samples = await scrape(client, router)
    assert value(samples, "modeshift_requests_total", route="/v1", lane="realtime", code="200") == 3
    assert value(samples, "modeshift_requests_total", route="/v1", lane="batch", code="200") == 1
    assert value(samples, "modeshift_requests_total", route="unmatched", lane="none", code="404") == 1
    duration = dict(route="/v1", lane="realtime")
    assert value(samples, "modeshift_request_duration_seconds_count", **duration) == 3
    assert value(samples, "modeshift_request_duration_seconds_bucket", le="+Inf", **duration) == 3
    assert value(samples, "modeshift_lane_requests_total", lane="realtime", outcome="ok") == 3
    assert abs(value(samples, "modeshift_cost_usd_total", lane="realtime") - 0.003) < 1e-12
    assert value(samples, "modeshift_lane_weight", lane="realtime") == 1.0
    assert value(samples, "modeshift_mode", mode="realtime") == 1.0
    assert value(samples, "modeshift_rollbacks_withheld_total") == 0
    assert ("modeshift_attainment", (("class", "switchable"),)) not in samples  # no tick yet: nothing to say
    router.tick()
    samples = await scrape(client, router)
    assert value(samples, "modeshift_attainment", **{"class": "switchable"}) == 1.0  # no objective: errors only
    assert value(samples, "modeshift_attainment", **{"class": "pinned"}) == 1.0


async def test_metrics_follow_a_forced_switch(upstream, start_router, client):
    realtime, batch = await upstream(), await upstream()
    router = await start_router(two_lane_config([realtime.url], [batch.url]))
    router.runtime.command(Force(mode="batch", gradual=False))
    samples = await scrape(client, router)
    assert value(samples, "modeshift_lane_weight", lane="batch") == 1.0
    assert (
        value(samples, "modeshift_mode", mode="batch") == 1.0 and value(samples, "modeshift_mode", mode="realtime") == 0
    )


async def test_metrics_need_the_admin_token(upstream, start_router, client):
    realtime = await upstream()
    router = await start_router(two_lane_config([realtime.url], [realtime.url]))
    async with client.get(f"{router.admin_url}/metrics") as response:
        assert response.status == 401
