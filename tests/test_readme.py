"""The README's "first five minutes" block, run as it is written: a newcomer's commands must work.

The block starts the two reference model servers and the router on the
ports `configs/default.yaml` names, sends one request, and simulates; the
test runs it with `bash -e` from the repository's root (the virtualenv the
suite runs in is the one it activates) and stops whatever it left behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- first-five-minutes -->"


def first_five_minutes() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(re.escape(MARKER) + r"\s*```sh\n(.*?)```", readme, re.S)
    assert found, f"README.md has no ```sh block after {MARKER}"
    return found.group(1)


def test_the_first_five_minutes_of_the_readme_run_as_written():
    script = first_five_minutes()
    assert "modeshift serve" in script and "curl" in script and "modeshift simulate" in script
    process = subprocess.Popen(
        ["bash", "-e", "-c", script],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "COLUMNS": "160"},
    )
    try:
        output, _ = process.communicate(timeout=300)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # anything the block left running
        except ProcessLookupError:
            pass
    assert process.returncode == 0, output[-3000:]
    assert "configs/default.yaml: ok" in output
    assert re.search(r"(?i)x-modeshift-lane: realtime", output), output[-3000:]
    assert "policies compared" in output and "service model: " in output


def annotated_config() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"This is `configs/default.yaml`, shortened:\s*```yaml\n(.*?)```", readme, re.S)
    assert found, "README.md has no annotated configs/default.yaml block"
    return found.group(1)


def differences(shown, real, path: str = "") -> list[str]:
    """Where the README's block says something else than the file (it may leave keys out, never change one)."""
    if isinstance(shown, dict) and isinstance(real, dict):
        out = []
        for key, value in shown.items():
            if key not in real:
                out.append(f"{path}{key}: in the README, not in the file")
            else:
                out += differences(value, real[key], f"{path}{key}.")
        return out
    return [] if shown == real else [f"{path.rstrip('.')}: README {shown!r}, file {real!r}"]


def test_the_readmes_annotated_config_is_the_real_file_shortened():
    import yaml

    from configs import parse_config, ready_config_path

    text = annotated_config()
    parse_config(text, "README.md")  # a valid config on its own
    real = yaml.safe_load(ready_config_path("default").read_text(encoding="utf-8"))
    assert differences(yaml.safe_load(text), real) == []


def test_the_readmes_lane_gate_table_gives_the_real_defaults():
    from configs.schema import LaneConfig
    from policies.units import duration_text

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("Each lane's gate, under `lanes.<name>`:") :].split("\n\n")[1]
    rows = re.findall(r"^\| `(\w+)` \| (\S+) \|", table, re.M)
    assert len(rows) == 6, table
    fields = {field.alias or name: field for name, field in LaneConfig.model_fields.items()}
    for setting, shown in rows:
        default = fields[setting].default
        real = duration_text(default) if setting in ("queue_timeout", "aging", "timeout") else str(default).lower()
        assert shown == real, (setting, shown, real)
