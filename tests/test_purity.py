"""The control core, the configs and the simulator never load aiohttp, and
the control core never reads a clock or does I/O."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_core_configs_and_simulator_do_not_import_aiohttp_or_asyncio():
    code = (
        "import sys, policies, configs, simulator\n"
        "import policies.switching, policies.control, policies.slo, configs.loader\n"
        "import simulator.engine, simulator.compare, simulator.report, simulator.command, simulator.generators\n"
        "loaded = sorted(m for m in ('aiohttp', 'asyncio') if m in sys.modules)\n"
        "print(','.join(loaded))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert done.stdout.strip() == ""


FORBIDDEN_MODULES = {"aiohttp", "asyncio", "socket", "time", "datetime", "threading", "os", "sqlite3", "requests"}


def test_policies_modules_import_nothing_impure():
    for path in sorted((ROOT / "policies").glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN_MODULES, f"{path.name} imports {name}"
