"""Every example config is valid: ``trilb check`` passes on each file in examples/.

An example that terminates TLS names certificate files its README says how to make; the test
copies the example into a temporary tree and makes those files there with trustme.
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest
import trustme

from trilb.cli import main

ROOT = Path(__file__).parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("**/*.toml"))


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 5


def _certificates(path: Path) -> list[str]:
    frontends = tomllib.loads(path.read_text()).get("frontends", {})
    return [
        certificate
        for frontend in frontends.values()
        for certificate in frontend.get("tls", {}).get("certificates", [])
    ]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT / "examples")))
def test_example_passes_trilb_check(
    path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / path.relative_to(ROOT)
    copy.parent.mkdir(parents=True)
    shutil.copy(path, copy)
    ca = trustme.CA()
    for certificate in _certificates(path):
        target = (copy.parent / certificate).resolve()
        assert target.is_relative_to(tmp_path), f"{certificate} points outside the repository"
        target.parent.mkdir(parents=True, exist_ok=True)
        ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(str(target))
    code = main(["check", str(copy)])
    output = capsys.readouterr()
    assert code == 0, output.out + output.err
    assert "configuration is valid" in output.out
