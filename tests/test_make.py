"""`make test` on a fresh machine: it installs the servers the suite runs, or says in one line what to install.

Run here with a PATH that has none of the servers and an `id` that says
"not root", and no sudo: the Makefile must stop at once (exit 2) with one
line naming the Debian packages, instead of a suite that ends in errors.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_without_root_or_sudo_make_names_the_missing_packages_in_one_line(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("ls", "sh"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    (bin_dir / "id").write_text("#!/bin/sh\necho 1000\n")
    (bin_dir / "id").chmod(0o755)
    run = subprocess.run(
        [shutil.which("make"), "-s", "system-packages"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("MAKE")}, "PATH": str(bin_dir)},
    )
    assert run.returncode == 2, (run.stdout, run.stderr)
    lines = [line for line in run.stderr.strip().splitlines() if not line.startswith("make: ***")]  # make's own
    assert len(lines) == 1 and "chromium" in lines[0] and "redis-server" in lines[0], lines
    assert "apt-get install" in lines[0]
