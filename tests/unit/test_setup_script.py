"""scripts/setup skips the work already done, and installs the browser only when asked (scripts/test).

The script runs for real in a scratch copy of the project's layout, with fakes for everything it
calls (the venv's python, npm, apt-get, sudo): each fake appends its command line to a log, so a
test reads which steps ran. No registry is contacted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FAKE = """#!/bin/sh
echo "{name} $*" >> "$SETUP_LOG"
{extra}
"""


def _fake(path: Path, name: str, extra: str = "") -> None:
    path.write_text(FAKE.format(name=name, extra=extra))
    path.chmod(0o755)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project tree with the files setup hashes, an existing .venv (fake python) and fake tools."""
    root = tmp_path / "project"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup", root / "scripts" / "setup")
    (root / "requirements.lock").write_text("aiohttp==3.14.5\n")
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (root / "chain").mkdir()
    (root / "chain" / "package-lock.json").write_text("{}\n")
    (root / ".venv" / "bin").mkdir(parents=True)
    _fake(root / ".venv" / "bin" / "python", "python")
    _fake(root / ".venv" / "bin" / "gateway", "gateway")
    tools = tmp_path / "tools"
    tools.mkdir()
    # npm ci leaves node_modules/.package-lock.json behind: setup checks it is there.
    _fake(tools / "npm", "npm", 'mkdir -p node_modules && touch node_modules/.package-lock.json\necho "added 11 packages"')
    _fake(tools / "apt-get", "apt-get")
    _fake(tools / "sudo", "sudo", 'shift; exec "$@"')
    return root


def run_setup(project: Path, *args: str, chromium: str = "chromium") -> tuple[list[str], str]:
    """Run setup; return the fake commands it ran (first word + first argument) and its output."""
    log = project.parent / "log"
    log.write_text("")
    env = dict(os.environ, SETUP_LOG=str(log), CHROMIUM=chromium,
               PATH=f"{project.parent / 'tools'}:{os.environ['PATH']}")
    done = subprocess.run([str(project / "scripts" / "setup"), *args], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    ran = [" ".join(line.split()[:2]) for line in log.read_text().splitlines()]
    return ran, done.stdout + done.stderr


def test_the_first_run_installs_everything_and_a_second_run_nothing(project):
    ran, _ = run_setup(project)
    assert ran == ["python -m", "python -m", "python -m", "npm ci"]  # pip itself, the lock, the project
    ran, output = run_setup(project)
    assert ran == []
    assert output == ""  # nothing done, nothing said


def test_a_changed_lock_redoes_only_its_own_step(project):
    run_setup(project)
    (project / "chain" / "package-lock.json").write_text('{"changed": true}\n')
    assert run_setup(project)[0] == ["npm ci"]
    (project / "requirements.lock").write_text("aiohttp==3.14.6\n")
    assert run_setup(project)[0] == ["python -m", "python -m", "python -m"]
    (project / "pyproject.toml").write_text("[project]\nname = 'y'\n")
    assert run_setup(project)[0] == ["python -m", "python -m", "python -m"]


def test_a_step_whose_output_is_gone_runs_again(project):
    run_setup(project)
    shutil.rmtree(project / "chain" / "node_modules")
    assert run_setup(project)[0] == ["npm ci"]
    (project / ".venv" / ".setup-python.sha256").unlink()  # what a new .venv looks like
    assert run_setup(project)[0] == ["python -m", "python -m", "python -m"]


def test_the_output_says_what_is_installed_and_nothing_more(project):
    _, output = run_setup(project)
    assert "added 11 packages" not in output  # npm's summary
    assert output.splitlines() == ["setup: installing Python packages (requirements.lock)",
                                   "setup: installing the chain's npm packages (chain/package-lock.json)"]


def test_the_browser_is_installed_only_with_the_browser_flag(project):
    missing = str(project / "no-such-chromium")
    ran, _ = run_setup(project, chromium=missing)
    assert not any(r.startswith("apt-get") for r in ran)  # what scripts/demo runs
    ran, _ = run_setup(project, "--browser", chromium=missing)
    assert ran == ["apt-get update", "apt-get install"]  # what scripts/test runs
    ran, _ = run_setup(project, "--browser")  # `chromium` is found: nothing to do
    assert ran == [] or shutil.which("chromium") is None


def test_demo_skips_the_browser_and_test_asks_for_it():
    assert "scripts/setup --browser" in (ROOT / "scripts" / "test").read_text()
    demo = (ROOT / "scripts" / "demo").read_text()
    assert "scripts/setup" in demo and "--browser" not in demo.split("scripts/setup", 1)[1].splitlines()[0].split("#")[0]
