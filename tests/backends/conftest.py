"""The real reference model, loaded once per test session (a few seconds on CPU)."""

from __future__ import annotations

import pytest

from backends.embedder import Embedder


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return Embedder(device="cpu")
