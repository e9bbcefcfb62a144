"""The upstream of known service model: its jitter is the simulator's, and a request may bring its own draw."""

import math
import random

import aiohttp
import numpy as np
import pytest

from backends.modeled_server import DRAW_HEADER, ModeledServer, draw_word
from commands.replay import text_for, texts_for
from simulator.service import jittered_s
from simulator.traces import TraceRequest


def test_a_calls_time_is_the_simulators_for_the_same_draw():
    server = ModeledServer(slots=1, base_s=0.04, per_item_s=0.002, per_output_token_s=0.01, jitter=0.3)
    for z in (-1.5, 0.0, 0.7, 2.2):
        assert server.call_s(3, 10, 5, z=z) == pytest.approx(jittered_s(0.04 + 0.006 + 0.05, 0.3, z))


def test_its_own_draws_have_mean_one_and_the_given_sigma():
    server = ModeledServer(slots=1, base_s=1.0, jitter=0.4, seed=7)
    times = np.array([server.call_s(0, 0) for _ in range(20_000)])
    assert times.mean() == pytest.approx(1.0, abs=0.02)
    assert np.log(times).std() == pytest.approx(0.4, abs=0.01)
    assert math.isclose(ModeledServer(slots=1, base_s=1.0).call_s(0, 0, z=3.0), 1.0)  # no jitter: no factor


async def test_calls_are_booked_in_arrival_order_on_the_slot_that_frees_first():
    """A FIFO queue before `slots` servers, its times computed: a late timer cannot delay the calls behind it."""
    server = ModeledServer(slots=2, base_s=1.0)
    booked = [server._book(service_s) for service_s in (1.0, 3.0, 1.0, 0.5, 2.0)]
    now = booked[0][0]
    starts_and_ends = [(start - now, end - now) for start, end in booked]
    # the first two start at once; each later call takes the slot that frees first: the third the first's
    # (free at 1), the fourth the third's (free at 2), the fifth the fourth's (free at 2.5, before 3)
    expected = [(0.0, 1.0), (0.0, 3.0), (1.0, 2.0), (2.0, 2.5), (2.5, 4.5)]
    assert starts_and_ends == [pytest.approx(pair, abs=0.01) for pair in expected]


async def test_a_merged_call_takes_its_draw_from_its_first_texts_first_word():
    """A router's micro-batch has no header of its own: the draw its first request brought in its text counts."""
    server = ModeledServer(slots=1, base_s=0.001, per_item_s=0.001, jitter=0.3, seed=3)
    url = await server.start()
    try:
        texts = [f"{draw_word(1.5)} two words", f"{draw_word(-2.0)} also three", "plain text here"]
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{url}/v1/embeddings", json={"input": texts, "model": "m"}) as answer:
                assert answer.status == 200
            headers = {DRAW_HEADER: "0.25"}  # a header, where there is one, comes first
            async with session.post(f"{url}/v1/embeddings", json={"input": texts[:1]}, headers=headers) as answer:
                assert answer.status == 200
            async with session.post(f"{url}/v1/embeddings", json={"input": ["no draw at all"]}) as answer:
                assert answer.status == 200
    finally:
        await server.stop()
    assert server.service_s[0] == pytest.approx(server.call_s(3, 9, z=1.5))
    assert server.service_s[1] == pytest.approx(server.call_s(1, 3, z=0.25))
    assert server.service_s[2] not in (pytest.approx(server.call_s(1, 3, z=z)) for z in (1.5, 0.25, -2.0))


def test_a_replay_with_draws_puts_each_draw_in_its_text_without_changing_its_length():
    trace = [TraceRequest(0.0, 400, 0, "/"), TraceRequest(0.1, 64, 0, "/")]
    plain = [text_for(r, random.Random(5)) for r in trace]
    drawn = texts_for(trace, random.Random(5), modeled_draws=[0.5, -1.25])
    assert [t.split()[0] for t in drawn] == [draw_word(0.5), draw_word(-1.25)]
    assert [len(t.split()) for t in drawn] == [len(t.split()) for t in plain]
