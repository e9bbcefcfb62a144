import math

import pytest

from configs import RouteConfig
from policies.control.weights import Weights
from router.errors import ProxyError
from router.routing import RouteTable, choose_lane, deadline_s, requested_lane

LANES = ("realtime", "batch")
HYBRID = Weights({"realtime": 0.5, "batch": 0.5}, LANES)


def test_longest_prefix_wins_on_whole_segments():
    embeddings = RouteConfig(path="/v1/embeddings", protocol="openai-embeddings")
    table = RouteTable((RouteConfig(path="/"), embeddings, RouteConfig(path="/v1")))
    assert table.match("/v1/embeddings").protocol == "openai-embeddings"
    assert table.match("/v1/embeddings/x").protocol == "openai-embeddings"
    assert table.match("/v1/embeddingsX").path == "/v1"
    assert table.match("/v2").path == "/"


def test_no_route_is_a_404_listing_the_routes():
    table = RouteTable((RouteConfig(path="/v1"),))
    with pytest.raises(ProxyError) as caught:
        table.match("/v10")
    assert caught.value.status == 404
    assert "/v1" in caught.value.message


def choose(**kw):
    args = dict(
        route_pin=None,
        header_pin=None,
        deadline=None,
        weights=HYBRID,
        expected_latency_s={},
        available=LANES,
        u=0.1,
    )
    return choose_lane(**{**args, **kw})


def test_pins_come_before_weights():
    assert choose(route_pin="batch").lane == "batch"
    assert choose(route_pin="batch").how == "route"
    assert choose(header_pin="batch", u=0.1).lane == "batch"
    assert choose(header_pin="batch").pinned


def test_auto_draw_follows_the_weights():
    assert choose(u=0.1).lane == "realtime"
    assert choose(u=0.9).lane == "batch"
    assert choose(u=0.9).how == "auto"


def test_deadline_rules_out_a_slow_lane_but_not_an_unknown_one():
    slow_batch = {"realtime": 0.01, "batch": 2.0}
    assert choose(deadline=0.5, expected_latency_s=slow_batch, u=0.9).lane == "realtime"
    assert choose(deadline=0.5, expected_latency_s=slow_batch, u=0.9).how == "deadline"
    assert choose(deadline=0.5, expected_latency_s={"realtime": 0.01, "batch": math.nan}, u=0.9).lane == "batch"


def test_deadline_no_lane_meets_goes_to_the_fastest():
    latencies = {"realtime": 1.0, "batch": 3.0}
    batch_only = Weights({"batch": 1.0}, LANES)
    assert choose(deadline=0.1, expected_latency_s=latencies, weights=batch_only).lane == "batch"
    # batch ruled out, realtime not, but realtime has no share: the fastest lane still in
    assert choose(deadline=2.0, expected_latency_s=latencies, weights=batch_only, u=0.5).lane == "realtime"


def test_a_lane_with_every_upstream_ejected_leaves_the_draw():
    assert choose(available=("realtime",), u=0.99).lane == "realtime"
    assert choose(available=(), u=0.99).lane == "batch"  # nothing left: draw as usual


def test_header_parsing():
    assert requested_lane(None, LANES) is None
    assert requested_lane("auto", LANES) is None
    assert requested_lane("batch", LANES) == "batch"
    with pytest.raises(ProxyError, match="not a lane"):
        requested_lane("fast", LANES)
    assert deadline_s("250") == 0.25
    for bad in ("soon", "-5", "0", "nan", "inf"):
        with pytest.raises(ProxyError, match="positive number"):
            deadline_s(bad)
