"""What `pip install .` ships: every package folder of the product is listed in pyproject.toml.

The package names are generic, so setuptools is given a list rather than
left to discover them; a folder missing from it installs in editable mode
(the tests) and is absent from a wheel (a user's install). The cluster
coordinator and the provider bridge were missing so.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("router", "policies", "backends", "simulator", "configs", "commands")


def test_every_package_folder_is_in_the_wheel():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts) for top in PRODUCT for init in (ROOT / top).rglob("__init__.py")
    }
    assert found - listed == set(), "add these to [tool.setuptools] packages"
