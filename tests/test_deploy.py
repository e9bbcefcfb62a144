"""The Kubernetes example in deploy/kubernetes/: valid manifests, a valid router config, and KEDA wired to it.

Built-in kinds are validated by kubernetes-validate against the Kubernetes
schemas (strict: an unknown field fails), KEDA's kinds against KEDA's own
CRD schemas (tests/data/keda). Then the pieces must fit: the config in the
ConfigMap loads, each autoscaled lane has a ScaledObject that reads that
lane's figure from the router's GET /capacity, with the lane's min and max,
scaling a Deployment that exists, through the router's Service.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from configs import parse_config
from router.admin.api import capacity
from router.server import runtime_for

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
KEDA_CRDS = Path(__file__).parent / "data" / "keda"
KUBERNETES = "1.33"


def documents() -> list[dict]:
    return [doc for path in sorted(DEPLOY.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def keda_schema(kind: str) -> dict:
    for path in KEDA_CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] == kind:
            return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    raise LookupError(kind)


@pytest.mark.parametrize("doc", documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_manifest_is_valid(doc):
    if doc["apiVersion"].startswith("keda.sh/"):
        jsonschema.validate(doc, keda_schema(doc["kind"]))
    else:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_keda_reads_each_autoscaled_lanes_figure_from_the_router():
    docs = documents()
    by_kind: dict[str, dict[str, dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    config = parse_config(by_kind["ConfigMap"]["modeshift-config"]["data"]["modeshift.yaml"], "modeshift.yaml")
    router_service = by_kind["Service"]["modeshift"]
    admin_port = next(p["port"] for p in router_service["spec"]["ports"] if p["name"] == "admin")
    figures = capacity(runtime_for(config))  # what GET /capacity answers
    autoscaled = {name: lane.autoscale for name, lane in config.lanes.items() if lane.autoscale is not None}
    scaled = by_kind["ScaledObject"]
    assert len(scaled) == len(autoscaled)
    for name, params in autoscaled.items():
        (scaler,) = [
            s for s in scaled.values() if s["spec"]["triggers"][0]["metadata"]["valueLocation"].split(".")[1] == name
        ]
        trigger = scaler["spec"]["triggers"][0]["metadata"]
        location = trigger["valueLocation"].split(".")
        value = figures
        for key in location:
            value = value[key]
        assert location[-1] == "desired" and isinstance(value, int)
        url = urlsplit(trigger["url"])
        assert url.hostname.split(".")[0] == "modeshift" and url.port == admin_port and url.path == "/capacity"
        assert (scaler["spec"]["minReplicaCount"], scaler["spec"]["maxReplicaCount"]) == (params.min, params.max)
        target = scaler["spec"]["scaleTargetRef"]["name"]
        assert target in by_kind["Deployment"]
        service = by_kind["Service"][target]
        assert service["spec"]["clusterIP"] == "None"  # headless: one DNS record per pod, for discovery
        assert urlsplit(config.lanes[name].upstreams[0]).hostname.split(".")[0] == target
