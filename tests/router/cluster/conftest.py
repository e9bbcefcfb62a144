"""No `modeshift serve` replica outlives its test: a test that fails half-way leaves none running."""

from __future__ import annotations

import pytest

from tests.router.cluster.test_chaos import STARTED


@pytest.fixture(autouse=True)
async def _no_replica_outlives_its_test():
    yield
    while STARTED:
        await STARTED.pop().kill()
