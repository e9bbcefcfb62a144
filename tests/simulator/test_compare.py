"""Comparing policies: the contenders, the oracle, the files and the command."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from configs import load_config, ready_config_path
from simulator.compare import compare, oracle, parse_policy, variants
from simulator.outcome import Outcome, SloTargets
from simulator.report import REQUEST_COLUMNS
from tests.simulator.test_engine import at, config, service

DEFAULT_SERVICE = str(Path(__file__).resolve().parents[2] / "configs" / "default.service.yaml")
SLO = SloTargets(pinned_s=1.0, switchable_s=1.0, attainment=0.9)


def _outcome(latency: list[float], cost: list[float], idle: float = 0.0) -> Outcome:
    n = len(latency)
    return Outcome(
        lanes=("realtime", "batch"),
        arrival_s=np.arange(n, dtype=float) * 30.0,  # two requests per 60 s window
        lane=np.zeros(n, dtype=np.int16),
        status=np.full(n, 200, dtype=np.int16),
        latency_s=np.array(latency),
        cost_usd=np.array(cost),
        pinned=np.zeros(n, dtype=bool),
        deadline_s=np.full(n, np.nan),
        idle_cost_usd={"realtime": idle, "batch": 0.0},
        end_s=n * 30.0,
    )


def test_the_oracle_takes_the_cheapest_mode_meeting_the_slo_in_each_window():
    fast = _outcome([0.1] * 6, [1.0] * 6)
    # Cheap, but too slow in the middle window.
    cheap = _outcome([0.5, 0.5, 5.0, 5.0, 0.5, 0.5], [0.1] * 6)
    stitched, chosen = oracle({"realtime": fast, "batch": cheap}, SLO, 60.0)
    assert chosen == ["batch", "realtime", "batch"]
    assert stitched.cost_usd.tolist() == pytest.approx([0.1, 0.1, 1.0, 1.0, 0.1, 0.1])
    assert stitched.met(SLO).all()


def test_when_no_mode_meets_the_slo_the_oracle_takes_the_closest():
    slow = _outcome([5.0, 5.0], [0.1, 0.1])
    less_slow = _outcome([0.5, 5.0], [1.0, 1.0])
    _, chosen = oracle({"a": slow, "b": less_slow}, SLO, 60.0)
    assert chosen == ["b"]


def test_variants_add_a_baseline_per_mode_and_parse_policy_specs():
    cfg = load_config(ready_config_path("default"))
    found = variants(cfg, ["load:low_rps=2,high_rps=5,hold=3s"])
    assert list(found) == ["config", "load:low_rps=2,high_rps=5,hold=3s", *(f"always-{m}" for m in cfg.modes)]
    assert found["always-batch"].initial_mode == "batch" and found["always-batch"].policy.type == "static"
    assert found["load:low_rps=2,high_rps=5,hold=3s"].policy.params.hold_s == 3.0
    with pytest.raises(ValueError, match="no '='"):
        parse_policy("load:low_rps")
    with pytest.raises(ValueError, match="high_mode"):
        variants(cfg, ["load:high_mode=nowhere"])


def test_compare_runs_every_contender_on_the_same_trace():
    trace = at(*[i * 0.05 for i in range(400)])
    result = compare(config(rt_slots=1, rt_queue=1000), service(rt_servers=1), trace, slo=SLO)
    assert set(result.summaries) == {"config", "always-realtime", "always-batch", "oracle"}
    assert all(s.total.requests == 400 for s in result.summaries.values())
    # One real-time server of 100 ms at 20 req/s overflows; batch keeps up, and is cheaper.
    assert result.summaries["always-realtime"].total.slo_switchable < 0.9
    assert result.summaries["oracle"].total.cost_usd == pytest.approx(result.summaries["always-batch"].total.cost_usd)


def test_the_simulate_command_prints_the_table_and_writes_its_files(tmp_path, capsys):
    from commands.cli import main

    out = tmp_path / "run"
    status = main(
        [
            "simulate",
            "--trace",
            "bundled",
            "-c",
            str(ready_config_path("default")),
            "--service",
            DEFAULT_SERVICE,
            "--policy",
            "slo:servers=8,p95=200ms",
            "--pinned-share",
            "0.2",
            "--slice",
            "0:120",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert status == 0
    for label in ("slo:servers=8,p95=200ms", "always-realtime", "always-batch", "oracle"):
        assert label in printed
    with open(out / "requests-always-batch.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and tuple(rows[0]) == REQUEST_COLUMNS and {r["route"] for r in rows} == {"/"}
    assert {r["lane"] for r in rows if r["pinned"] == "0"} == {"batch"}
    summary = json.loads((out / "summary.json").read_text(), parse_constant=_not_json)  # strict: no NaN
    assert summary["config"]["rows"]["total"]["requests"] == len(rows)
    assert summary["always-realtime"]["rows"]["batch"]["requests"] == 0
    assert summary["always-realtime"]["rows"]["batch"]["p50_s"] is None  # a figure that does not exist is null
    assert "nan" not in printed.lower()  # and "-" in the tables


def _not_json(constant: str):
    raise ValueError(f"{constant} is not JSON")


def test_simulate_finds_the_service_model_shipped_beside_a_config_and_says_which(tmp_path, capsys):
    from commands.cli import main

    args = ["simulate", "--trace", "bundled", "--slice", "0:30", "-c", str(ready_config_path("default"))]
    assert main(args) == 0
    assert "default.service.yaml" in capsys.readouterr().out
    alone = tmp_path / "mine.yaml"
    alone.write_text(ready_config_path("default").read_text())
    assert main([*args[:-1], str(alone)]) == 2
    assert "pass --service FILE" in capsys.readouterr().err


def test_the_simulate_command_refuses_bad_input_with_exit_2(tmp_path, capsys):
    from commands.cli import main

    args = ["simulate", "--trace", "bundled", "-c", str(ready_config_path("default"))]
    only_embeddings = tmp_path / "embeddings-only.yaml"
    only_embeddings.write_text(ready_config_path("default").read_text().replace("  - {path: /, protocol: http}\n", ""))
    unrouted = ["simulate", "--trace", "bundled", "-c", str(only_embeddings), "--service", DEFAULT_SERVICE]
    assert main([*unrouted, "--route", "/v2/other"]) == 2  # a path the config does not route: said, no traceback
    assert "/v2/other match no route" in capsys.readouterr().err
    assert main([*args, "--service", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main([*args, "--service", DEFAULT_SERVICE, "--policy", "nosuch"]) == 2
    assert "unknown policy" in capsys.readouterr().err
