"""`gateway --version` names the package version (the one pyproject.toml and gateway_build_info carry)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

import gateway
from gateway.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_version_prints_the_package_version_and_exits_0(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"gateway {gateway.__version__}"


def test_the_package_version_is_pyprojects():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["version"] == gateway.__version__
