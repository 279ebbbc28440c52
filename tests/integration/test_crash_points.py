"""gateway.ops.crash_points: the SIGKILL test hook is a no-op unless GATEWAY_CRASH_AT names the step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from gateway.dev.process import REPO

SCRIPT = "from gateway.ops.crash_points import crash_point; crash_point('step'); print('alive')"


def run(env_value: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CRASH_AT"}
    if env_value is not None:
        env["GATEWAY_CRASH_AT"] = env_value
    return subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=30)


def test_without_the_variable_the_hook_does_nothing():
    for value in (None, "", "another_step"):
        done = run(value)
        assert (done.returncode, done.stdout) == (0, "alive\n")


def test_the_named_step_kills_the_process_with_sigkill():
    done = run("step")
    assert done.returncode == -signal.SIGKILL and done.stdout == ""
