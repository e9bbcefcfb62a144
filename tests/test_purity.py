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
        "import policies.control.switching, policies.control.loop, policies.builtin.slo, configs.loader\n"
        "import simulator.engine, simulator.compare, simulator.report, simulator.command, simulator.generators\n"
        "loaded = sorted(m for m in ('aiohttp', 'asyncio') if m in sys.modules)\n"
        "print(','.join(loaded))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert done.stdout.strip() == ""


FORBIDDEN_MODULES = {"aiohttp", "asyncio", "socket", "time", "datetime", "threading", "os", "sqlite3", "requests"}


def test_policies_modules_import_nothing_impure():
    for path in sorted((ROOT / "policies").rglob("*.py")):
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


def _imported_packages(folder: Path) -> dict[str, set[str]]:
    """file -> the top-level packages its imports name (relative to ROOT)."""
    found: dict[str, set[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def test_the_data_plane_never_imports_the_simulator_or_the_command_line():
    for path, names in _imported_packages(ROOT / "router").items():
        assert not names & {"simulator", "commands"}, f"{path} imports {sorted(names & {'simulator', 'commands'})}"


def test_nothing_but_the_command_line_imports_it():
    for folder in ("policies", "configs", "backends", "router", "simulator"):
        for path, names in _imported_packages(ROOT / folder).items():
            assert "commands" not in names, f"{path} imports commands"


def test_the_rooms_of_the_control_core_import_one_way():
    """policies.path and policies.builtin read policies.control; control reads neither, path never a policy."""
    forbidden = {"control": ("policies.path", "policies.builtin"), "path": ("policies.builtin",)}
    for room, names in forbidden.items():
        for path in sorted((ROOT / "policies" / room).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module:
                    assert not node.module.startswith(names), f"{path.relative_to(ROOT)} imports {node.module}"
                elif isinstance(node, ast.Import):
                    for alias in node.names:
                        assert not alias.name.startswith(names), f"{path.relative_to(ROOT)} imports {alias.name}"
