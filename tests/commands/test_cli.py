import json
import subprocess
import sys

from commands.cli import main
from configs import ready_config_path


def test_validate_ok_exits_0(capsys):
    assert main(["validate", str(ready_config_path("default"))]) == 0
    assert "ok (2 lanes: realtime, batch" in capsys.readouterr().out


def test_validate_errors_exit_2_with_one_line_each(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lanes: {}\nmodes: {}\ninitial_mode: x\npolicy: {type: nope}\n")
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and all(line.startswith(f"{bad}:") for line in err)


def test_schema_is_json_for_editors(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert {"lanes", "modes", "policy", "switching"} <= set(schema["properties"])
    switching = schema["$defs"]["SwitchingParams"]["properties"]
    assert "hold" in switching and switching["hold"]["type"] == "string"
    lane = schema["$defs"]["LaneConfig"]["properties"]
    assert lane["queue_timeout"]["type"] == "string" and lane["queue_timeout"]["default"] == "5s"  # as a file says


def test_console_script_runs_as_a_module():
    done = subprocess.run(
        [sys.executable, "-m", "commands", "validate", str(ready_config_path("provider"))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
