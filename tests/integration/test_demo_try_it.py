"""`gateway demo` as a newcomer uses it (issue 15, items 1 and 4): every "try it" command it prints
answers what it says it answers (`# -> NNN` beside each curl), `gateway usage` on its ledger needs no
other secret, and its state folder is gone when it exits unless `--keep`."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from gateway.dev.demo import TRY_IT
from gateway.dev.process import REPO, ChildProcess

STATE = r"^state +(\S+) "


def _state_folder(lines: list[str]) -> Path:
    return Path(next(m.group(1) for line in lines if (m := re.match(STATE, line))))


def test_every_printed_curl_answers_what_the_demo_says_then_the_folder_is_removed():
    demo = ChildProcess([sys.executable, "-m", "gateway", "demo"], ready=r"everything is running", timeout=240)
    try:
        lines = list(demo.lines)
        state = _state_folder(lines)
        assert state.is_dir()
        start = lines.index(next(line for line in lines if line.startswith("try it:")))
        token = next(line.split("=", 1)[1] for line in lines[start:] if line.startswith("  export TOKEN="))
        curls = [line.strip() for line in lines[start:] if line.startswith("  curl ")]
        assert len(curls) == 3, lines[start:]
        port = re.search(r"Host: [^:']+:(\d+)'", curls[0]).group(1)
        for line in curls:
            command, expected = line.rsplit("# -> ", 1)
            # The shell would expand $TOKEN from the printed `export`; nothing else needs a shell.
            argv = [arg.replace("$TOKEN", token) for arg in shlex.split(command)]
            run = subprocess.run([*argv, "-w", "\n%{http_code}"], capture_output=True, text=True, timeout=30)
            body, status = run.stdout.rsplit("\n", 1)
            assert status == expected.strip(), (line, run.stdout, run.stderr)
            if line.endswith("ai-plugin.json   # -> 200"):
                # Host carries the port: the rewritten manifest points at the port the gateway listens on.
                assert f'"url": "http://elvis.proxy.localhost:{port}/.well-known/openapi.yaml"' in body, body
            if "Bearer $TOKEN" in line:
                assert f'"subscriber": "{TRY_IT}"' in body, body

        usage = next(line for line in lines[start:] if " usage --config " in line)
        command = usage.split("   # ", 1)[0].strip()
        assignment, *argv = shlex.split(command)
        env = {k: v for k, v in os.environ.items()
               if k not in ("GATEWAY_SIGNING_KEY_FILE", "ELVIS_UPSTREAM_TOKEN", "GATEWAY_STATE_DIR")}
        env["GATEWAY_STATE_DIR"] = assignment.split("=", 1)[1]
        report = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, cwd="/")
        assert report.returncode == 0, report.stderr
        assert re.search(rf"^elvis +{TRY_IT} +1 +1 +0 +1 +0", report.stdout, re.M), report.stdout
    finally:
        code = demo.stop(signal.SIGINT, timeout=30)
    assert code == 0, "\n".join(demo.lines[-20:])
    assert not state.exists()


def test_once_prints_no_try_it_and_keep_keeps_the_folder():
    run = subprocess.run([sys.executable, "-m", "gateway", "demo", "--once", "--keep"], capture_output=True,
                         text=True, cwd=REPO, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    state = _state_folder(run.stdout.splitlines())
    try:
        assert "kept on exit" in run.stdout
        # Why none: with --once every server is stopped before a person could paste a command.
        assert "try it" not in run.stdout and "curl " not in run.stdout and "export TOKEN" not in run.stdout
        assert (state / "ledger.db").is_file() and (state / "signing-key.pem").is_file()
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_once_removes_its_folder():
    run = subprocess.run([sys.executable, "-m", "gateway", "demo", "--once"], capture_output=True, text=True,
                         cwd=REPO, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    state = _state_folder(run.stdout.splitlines())
    assert "removed on exit" in run.stdout
    assert not state.exists()
