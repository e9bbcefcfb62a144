import sys
import textwrap

import pytest
from pydantic import ValidationError

from policies import registry
from policies.control.protocol import BasePolicy, PolicyParams
from policies.registry import PolicySpec, UnknownPolicy, known_policies, register, resolve


def test_builtin_names():
    assert {"adaptive", "composite", "cost", "latency", "load", "static"} <= set(known_policies())
    assert resolve("load").name == "load"


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(UnknownPolicy, match="known: adaptive, composite"):
        resolve("latncy")


def test_import_path(tmp_path, monkeypatch):
    (tmp_path / "surge_policy.py").write_text(
        textwrap.dedent(
            """
            from policies.control.protocol import BasePolicy, PolicyParams

            class SurgeParams(PolicyParams):
                factor: float = 2.0

            class SurgePolicy(BasePolicy):
                name = "surge"
                Params = SurgeParams

                def decide(self, snapshot):
                    return None
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = PolicySpec(type="surge_policy:SurgePolicy", params={"factor": 3})
    assert spec.params.factor == 3.0
    with pytest.raises(ValidationError, match="Extra inputs"):
        PolicySpec(type="surge_policy:SurgePolicy", params={"facter": 3})
    with pytest.raises(UnknownPolicy, match="cannot import"):
        resolve("surge_policy:Nope")


def test_entry_point_group(tmp_path, monkeypatch):
    dist = tmp_path / "modeshift_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: modeshift-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[modeshift.policies]\nquiet = quiet_plugin:QuietPolicy\n")
    (tmp_path / "quiet_plugin.py").write_text(
        "from policies.control.protocol import BasePolicy, PolicyParams\n"
        "class QuietPolicy(BasePolicy):\n"
        "    name = 'quiet'\n"
        "    Params = PolicyParams\n"
        "    def decide(self, snapshot):\n"
        "        return None\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "quiet" in known_policies()
    assert resolve("quiet").__name__ == "QuietPolicy"
    sys.modules.pop("quiet_plugin", None)


def test_register_checks_the_shape(monkeypatch):
    monkeypatch.setattr(registry, "_registered", {})

    class NotAPolicy:
        pass

    with pytest.raises(UnknownPolicy, match="not a policy"):
        register("broken", NotAPolicy)

    class Fine(BasePolicy):
        name = "fine"
        Params = PolicyParams

        def decide(self, snapshot):
            return None

    register("fine", Fine)
    assert resolve("fine") is Fine
