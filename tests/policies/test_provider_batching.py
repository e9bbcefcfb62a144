"""The provider batch lane's pure rules: when a gathered file is full or due, and when to poll."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from policies.path.provider_batching import BatchApiParams, FileGathering, poll_delay_s


def test_a_file_goes_when_full_by_count_or_bytes_or_max_wait_after_its_first_line():
    rule = FileGathering.of(BatchApiParams(api="openai", max_requests=3, max_bytes=100, max_wait="10s"))
    assert rule.due_at(5.0, 1, 10) == 15.0
    assert rule.due_at(5.0, 3, 10) == 5.0  # full by count: at once
    assert rule.due_at(5.0, 1, 100) == 5.0  # full by bytes
    assert rule.fits(2, 50, 50) and not rule.fits(2, 51, 50) and not rule.fits(3, 0, 1)
    assert rule.fits(0, 0, 500)  # a line larger than a file goes alone: the provider judges it


def test_polls_spread_by_jitter_and_back_off_after_failures_up_to_a_ceiling():
    assert poll_delay_s(30.0, 0, 0.0) == pytest.approx(24.0)
    assert poll_delay_s(30.0, 0, 0.999999) == pytest.approx(36.0, rel=1e-5)
    assert poll_delay_s(30.0, 3, 0.5) == pytest.approx(240.0)
    assert poll_delay_s(30.0, 40, 0.5) == pytest.approx(30.0 * 32)


def test_the_providers_limits_and_windows_are_checked():
    with pytest.raises(ValidationError, match="over openai's 50,000"):
        BatchApiParams(api="openai", max_requests=50_001)
    with pytest.raises(ValidationError, match="over anthropic's 256,000,000"):
        BatchApiParams(api="anthropic", max_bytes="300MB")
    with pytest.raises(ValidationError, match="completion_window '1h'"):
        BatchApiParams(api="openai", completion_window="1h")
    assert BatchApiParams(api="anthropic", max_requests=100_000).window_s == 86_400.0
