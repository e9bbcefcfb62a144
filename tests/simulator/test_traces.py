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


def test_jsonl_round_trips_every_field(tmp_path):
    from simulator.traces import read_jsonl, write_jsonl

    trace = [
        TraceRequest(0.0, 10, 2),
        TraceRequest(0.5, 0, 0, route="/v1/embeddings", items=8, mode="realtime", deadline_ms=200.0, id="a"),
    ]
    write_jsonl(trace, tmp_path / "t.jsonl")
    assert read_jsonl(tmp_path / "t.jsonl") == trace


def test_a_bad_jsonl_line_names_the_file_line_and_field(tmp_path):
    from simulator.traces import read_jsonl

    path = tmp_path / "t.jsonl"
    path.write_text('{"t": 0, "input_tokens": 3}\n{"t": 1, "input_tokens": "many"}\n')
    with pytest.raises(ValueError, match=r"t.jsonl:2: .*many"):
        read_jsonl(path)
    path.write_text('{"t": 0, "tokens": 3}\n')
    with pytest.raises(ValueError, match=r"t.jsonl:1: unknown fields \['tokens'\]"):
        read_jsonl(path)


def test_load_trace_tells_the_three_formats_apart(tmp_path):
    from simulator.traces import load_trace

    (tmp_path / "m.jsonl").write_text(
        '{"timestamp": 1000, "input_length": 7, "output_length": 3, "hash_ids": [1]}\n'
        '{"timestamp": 1500, "input_length": 9, "output_length": 4, "hash_ids": [2]}\n'
    )
    assert load_trace(tmp_path / "m.jsonl") == [TraceRequest(0.0, 7, 3), TraceRequest(0.5, 9, 4)]
    (tmp_path / "ours.jsonl").write_text('{"t": 3.0, "input_tokens": 1}\n')
    assert load_trace(tmp_path / "ours.jsonl") == [TraceRequest(0.0, 1, 0)]
    from importlib import resources

    assert load_trace(str(resources.files("simulator").joinpath("azure_conv_slice.csv"))) == bundled_azure_slice()
    (tmp_path / "other.txt").write_text("hello\n")
    with pytest.raises(ValueError, match="not a trace"):
        load_trace(tmp_path / "other.txt")


def test_scaling_slicing_and_pinning():
    import random

    from simulator.traces import sliced, time_scaled, with_pinned_share

    trace = [TraceRequest(float(i), 1, 1) for i in range(100)]
    assert [r.t_s for r in time_scaled(trace, 2.0)[:3]] == [0.0, 0.5, 1.0]
    window = sliced(trace, 10.0, 20.0)
    assert len(window) == 10 and window[0].t_s == 0.0
    pinned = with_pinned_share(trace * 20, 0.3, random.Random(1))
    share = sum(r.mode == "realtime" for r in pinned) / len(pinned)
    assert share == pytest.approx(0.3, abs=0.03)
