import pytest

from simulator.traces import TraceRequest, bundled_azure_slice, read_azure_csv, with_rush


def test_bundled_slice_is_the_azure_trace():
    trace = bundled_azure_slice()
    assert len(trace) == 3000
    assert trace[0] == TraceRequest(0.0, 374, 44)
    assert all(a.t_s <= b.t_s for a, b in zip(trace, trace[1:]))
    assert 4.0 < len(trace) / trace[-1].t_s < 6.0  # about 5.5 req/s, as documented


def test_rush_compresses_only_its_stretch():
    trace = [TraceRequest(float(i), 1, 1) for i in range(10)]
    rushed = with_rush(trace, 3, 6, 4.0)
    assert [r.t_s for r in rushed] == [0, 1, 2, 2.25, 2.5, 2.75, 3.75, 4.75, 5.75, 6.75]


def test_wrong_columns_are_named(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("time,tokens\n1,2\n")
    with pytest.raises(ValueError, match="missing columns"):
        read_azure_csv(path)
