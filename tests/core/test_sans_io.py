"""The decision-making core must stay sans-IO: importing it must not pull in trio or sockets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

#: every module of trilb/core (found, not listed: a new one is checked without being added here)
CORE_MODULES = [
    f"trilb.core.{path.stem}"
    for path in sorted((Path(__file__).parents[2] / "trilb" / "core").glob("*.py"))
    if path.stem != "__init__"
] + ["trilb.config"]


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_imports_no_io(module: str) -> None:
    code = (
        "import sys, importlib\n"
        f"importlib.import_module({module!r})\n"
        "print(sorted(m for m in ('trio', 'socket', 'ssl', 'asyncio') if m in sys.modules))\n"
    )
    # trilb/__init__ imports the shell; import the module by path-free name with the package's
    # __init__ replaced by nothing, so only the module's own imports count.
    result = subprocess.run(
        [sys.executable, "-c", _without_package_init(code)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "[]", f"{module} imports {result.stdout.strip()}"


def _without_package_init(code: str) -> str:
    """Run ``code`` with ``trilb`` registered as a bare namespace, so importing ``trilb.core.x``
    does not execute ``trilb/__init__.py`` (which, by design, imports the Trio shell)."""
    return (
        "import importlib.util, sys, types, pathlib\n"
        "spec = importlib.util.find_spec('trilb')\n"
        "package = types.ModuleType('trilb')\n"
        "package.__path__ = list(spec.submodule_search_locations)\n"
        "sys.modules['trilb'] = package\n" + code
    )
