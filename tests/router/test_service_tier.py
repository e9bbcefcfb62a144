"""OpenAI's service_tier through a real router: priority pins to the real-time lane, flex spills on 429.

The upstreams are the provider stand-in (tests/standins/provider.py), which
answers with the tier it served at, and refuses flex with 429
`resource_unavailable` while it has no flex capacity.
"""

from __future__ import annotations

import json

from configs import ModeshiftConfig
from tests.router.helpers import two_lane_raw

KEY = {"Authorization": "Bearer sk-alice-1234"}
PRICES = {"per_1k_input_tokens": 0.002, "per_1k_output_tokens": 0.008}
ROUTES = [{"path": "/v1/chat/completions", "protocol": "openai-chat"}]


def chat(tier: str | None = None) -> bytes:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    if tier is not None:
        body["service_tier"] = tier
    return json.dumps(body).encode()


async def test_a_priority_request_is_served_by_the_real_time_lane_in_batch_mode(provider, start_router, client):
    raw = two_lane_raw([provider.url], [provider.url], initial_mode="batch", routes=ROUTES)
    raw["policy"] = {"type": "static", "params": {"mode": "batch"}}
    router = await start_router(ModeshiftConfig.model_validate(raw, context={}))
    served = {}
    for tier in (None, "default", "auto", "flex", "priority", "fast"):
        async with client.post(f"{router.url}/v1/chat/completions", data=chat(tier), headers=KEY) as response:
            assert response.status == 200
            served[tier] = (response.headers["X-Modeshift-Lane"], response.headers.get("X-Modeshift-Service-Tier"))
    assert served == {
        None: ("batch", "default"),
        "default": ("batch", "default"),
        "auto": ("batch", "default"),
        "flex": ("batch", "flex"),
        "priority": ("realtime", "priority"),
        "fast": ("realtime", "priority"),
    }


def flex_config(flex_url: str, realtime_url: str) -> ModeshiftConfig:
    raw = two_lane_raw(
        [realtime_url],
        [flex_url],
        lanes={
            "realtime": {"upstreams": [realtime_url], "cost": PRICES},
            "flex": {"upstreams": [flex_url], "service_tier": "flex", "cost": {**PRICES, "discount": 0.5}},
        },
        initial_mode="flex",
        routes=ROUTES,
    )
    raw["modes"] = {"realtime": {"realtime": 1.0}, "flex": {"flex": 1.0}}
    raw["policy"] = {"type": "static", "params": {"mode": "flex"}}
    return ModeshiftConfig.model_validate(raw, context={})


async def test_a_flex_lane_sends_flex_and_spills_a_429_resource_unavailable_to_the_next_lane(
    provider, upstream, start_router, client
):
    realtime = await upstream()
    router = await start_router(flex_config(provider.url, realtime.url))
    async with client.post(f"{router.url}/v1/chat/completions", data=chat(), headers=KEY) as response:
        assert response.status == 200 and response.headers["X-Modeshift-Lane"] == "flex"
        assert response.headers["X-Modeshift-Service-Tier"] == "flex"
    provider.flex_capacity = False
    async with client.post(f"{router.url}/v1/chat/completions", data=chat(), headers=KEY) as response:
        assert response.status == 200 and response.headers["X-Modeshift-Lane"] == "realtime"
    assert provider.chat_tiers == ["flex", "flex"]  # the lane asked for flex though the client did not
    assert len(realtime.seen) == 1
    flex = router.runtime.state.lanes["flex"].window.read(router.clock()).window
    assert flex.completions == 2 and flex.errors == 1  # the lane that could not serve is seen failing
    pinned = {**KEY, "X-Modeshift-Mode": "flex"}
    async with client.post(f"{router.url}/v1/chat/completions", data=chat(), headers=pinned) as response:
        assert response.status == 429  # pinned: no lane to spill to, the provider's answer as it was
        assert (await response.json())["error"]["code"] == "resource_unavailable"


async def test_a_flex_lanes_discount_is_booked_only_when_the_provider_served_flex(
    provider, upstream, start_router, client
):
    realtime = await upstream()
    router = await start_router(flex_config(provider.url, realtime.url))
    list_price = (10 * 0.002 + 5 * 0.008) / 1000  # the stand-in's usage: 10 input and 5 output tokens
    costs = []
    for runs_as in ("flex", "default"):
        provider.flex_runs_as = runs_as
        before = router.runtime.state.lanes["flex"].window.read(router.clock()).window.cost_usd
        async with client.post(f"{router.url}/v1/chat/completions", data=chat(), headers=KEY) as response:
            assert response.headers["X-Modeshift-Service-Tier"] == runs_as
        costs.append(router.runtime.state.lanes["flex"].window.read(router.clock()).window.cost_usd - before)
    assert abs(costs[0] - list_price * 0.5) < 1e-12 and abs(costs[1] - list_price) < 1e-12
