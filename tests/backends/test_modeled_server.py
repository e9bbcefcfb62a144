"""The upstream of known service model: its jitter is the simulator's, and a request may bring its own draw."""

import math

import numpy as np
import pytest

from backends.modeled_server import ModeledServer
from simulator.service import jittered_s


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
