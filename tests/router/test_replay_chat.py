"""`modeshift replay --protocol openai-chat` through a real router to a chat upstream of known service model."""

import math

import pytest

from backends.modeled_server import ModeledServer
from commands.replay import as_sent, replay
from simulator.traces import TraceRequest
from tests.router.helpers import two_lane_config

OUTPUTS = (3, 9, 5, 12)
CHAT_TRACE = [TraceRequest(0.05 * i, 64, n, mode="realtime" if i % 2 else None) for i, n in enumerate(OUTPUTS)]


async def test_a_chat_replay_asks_for_the_traces_output_tokens_and_records_them_its_first_token_and_cost(
    start_router,
):
    """Through a real router to a chat upstream whose time per output token is known (ModeledServer)."""
    upstream = ModeledServer(slots=4, base_s=0.02, per_output_token_s=0.01)
    url = await upstream.start()
    price = {"per_1k_input_tokens": 0.5, "per_1k_output_tokens": 2.0}
    lanes = {"realtime": {"upstreams": [url], "cost": price}, "batch": {"upstreams": [url], "cost": price}}
    routes = [{"path": "/v1/chat/completions", "protocol": "openai-chat"}, {"path": "/", "protocol": "http"}]
    router = await start_router(two_lane_config([url], [url], lanes=lanes, routes=routes))
    try:
        target = f"{router.url}/v1/chat/completions"
        whole = await replay(target, CHAT_TRACE, protocol="openai-chat", model="m")
        streamed = await replay(target, CHAT_TRACE, protocol="openai-chat", stream=True)
    finally:
        await upstream.stop()
    assert sorted(upstream.output_tokens) == sorted([3, 9, 5, 12] * 2)  # max_tokens: the trace's output tokens
    for results in (whole, streamed):
        assert [r.status for r in results] == [200] * 4
        assert [r.output_tokens for r in results] == [3, 9, 5, 12]
        assert [r.route for r in results] == ["/v1/chat/completions"] * 4
        sent = as_sent(CHAT_TRACE, results)
        assert [request.output_tokens for request in sent] == [3, 9, 5, 12]  # simulated with its decode time
    for r in whole:  # read whole by the router: the cost it attributed comes back as a header
        assert r.cost_usd == pytest.approx((0.5 * r.input_tokens + 2.0 * r.output_tokens) / 1000)
        assert math.isnan(r.ttft_s)
    for r in streamed:  # the first token comes after the prefill, the last after every token's time
        assert 0.015 <= r.ttft_s < r.latency_s and r.latency_s >= 0.02 + 0.01 * r.output_tokens * 0.9
        assert math.isnan(r.cost_usd)  # streamed: known only at its end, in the metrics
