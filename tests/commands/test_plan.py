"""`modeshift plan` on the shipped vLLM config and ten minutes of the Azure trace: the table, plan.json, and
KEDA manifests that KEDA's own schema accepts, with the plan's bounds."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml

from commands.cli import main
from configs import load_config, ready_config_path
from tests.test_deploy import keda_schema

AZURE = Path(__file__).resolve().parents[2].parent / "shared" / "traces" / "azure_llm_2023_conv.csv"
ARGS = ["--trace", str(AZURE), "--slice", "0:600", "--route", "/v1/chat/completions", "--pinned-share", "0.1"]


def test_plan_prints_the_fleets_and_writes_plan_json_and_keda_manifests(tmp_path, capsys):
    out = tmp_path / "plan"
    config_path = ready_config_path("openai-vllm")
    assert main(["plan", *ARGS, "-c", str(config_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for fleet in ("static peak", "static, best split", "utilisation autoscaling", "modeshift", "oracle"):
        assert fleet in printed
    record = json.loads((out / "plan.json").read_text(), parse_constant=_not_json)
    fleets = {f["label"]: f for f in record["fleets"]}
    ours = fleets["modeshift"]
    assert ours["keeps_objectives"] and ours["saving"] > 0
    assert fleets["oracle"]["cost_usd"] <= ours["cost_usd"] < fleets["static peak"]["cost_usd"]
    docs = list(yaml.safe_load_all((out / "keda.yaml").read_text()))
    config = load_config(config_path)
    scaled = {d["spec"]["triggers"][0]["metadata"]["valueLocation"]: d for d in docs if d["kind"] == "ScaledObject"}
    assert set(scaled) == {f"lanes.{lane}.desired" for lane in config.lanes}
    for doc in docs:
        jsonschema.validate(doc, keda_schema(doc["kind"]))
    for lane in config.lanes:
        spec = scaled[f"lanes.{lane}.desired"]["spec"]
        fewest, most = ours["replicas"][lane]["min"], ours["replicas"][lane]["max"]
        assert spec["minReplicaCount"] == max(fewest, config.lanes[lane].autoscale.min)
        assert spec["maxReplicaCount"] >= most
        assert spec["scaleTargetRef"]["name"] == f"vllm-{lane}"  # the lane's headless Service and Deployment


def test_plan_refuses_a_config_whose_lanes_are_not_paid_by_the_replica(capsys):
    assert main(["plan", *ARGS, "-c", str(ready_config_path("default"))]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "lane 'realtime'" in line and "autoscale" in line


def _not_json(constant: str):
    raise ValueError(f"{constant} is not JSON")
