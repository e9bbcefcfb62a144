import pytest
from pydantic import BaseModel, ValidationError

from policies.units import UNITS_REQUIRED, ByteSize, Duration, parse_duration_s, parse_size_bytes


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("50ms", 0.05), ("2s", 2.0), ("5m", 300.0), ("1h30m", 5400.0), ("250us", 250e-6), ("1.5s", 1.5), ("24h", 86400.0)],
)
def test_durations(text, seconds):
    assert parse_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["fast", "10", "ms", "-1s", "1 parsec", "1s2"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration_s(text)


@pytest.mark.parametrize(("text", "n"), [("1MiB", 2**20), ("64KiB", 65536), ("10MB", 10_000_000), ("512", 512)])
def test_sizes(text, n):
    assert parse_size_bytes(text) == n


class _Model(BaseModel):
    wait: Duration
    body: ByteSize = 0


def test_bare_numbers_are_seconds_in_python_but_refused_from_yaml():
    assert _Model(wait=2).wait == 2.0
    with pytest.raises(ValidationError, match="bare number is ambiguous"):
        _Model.model_validate({"wait": 2}, context={UNITS_REQUIRED: True})
    assert _Model.model_validate({"wait": 0}, context={UNITS_REQUIRED: True}).wait == 0.0


def test_negative_duration_refused():
    with pytest.raises(ValidationError):
        _Model(wait=-1)


def test_a_duration_written_back_as_text_reads_as_itself():
    from policies.units import duration_text

    for seconds in (0.0, 0.05, 1.5, 5.0, 90.0, 600.0, 3600.0, 5400.0):
        assert parse_duration_s(duration_text(seconds)) == pytest.approx(seconds)
    assert [duration_text(s) for s in (5.0, 0.05, 600.0, 7200.0)] == ["5s", "50ms", "10m", "2h"]
