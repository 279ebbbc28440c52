"""`gateway check-config` and `gateway serve` as processes on one config holding every former
start-up refusal: check-config reports them all at once, serve refuses to start. One test per
former gap, in-process, in tests/unit/test_config_checks.py."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from gateway.auth.issuer import generate_signing_key
from gateway.dev.process import REPO


# --- all at once, through the real command line ---------------------------------------------

def test_check_config_cli_reports_every_former_start_up_refusal_at_once(tmp_path):
    key = tmp_path / "own.pem"
    generate_signing_key(key, "ES256")
    (tmp_path / "idp.pem").write_text("not a key")
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent(f"""
        listen: 127.0.0.1:8080
        admin_listen: 127.0.0.1:8080
        base_domain: proxy.localhost
        tokens:
          own: {{issuer: https://gw.test, signing_key_file: {key}}}
          issuers:
            - {{issuer: https://idp.test, algorithms: [ES256], public_key_file: idp.pem}}
        services:
          api: {{upstream: "http://127.0.0.1:9000"}}
          other: {{upstream: "http://127.0.0.1:9001", hosts: [api.proxy.localhost]}}
        metering:
          ledger: redis://localhost:6379/0
          operator_key: "0x{0:064x}"
    """))
    run = subprocess.run([sys.executable, "-m", "gateway", "check-config", str(path)],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 1, run.stdout
    lines = [line.strip() for line in run.stderr.splitlines()]
    assert lines[0] == f"{path}: 5 problem(s)", run.stderr
    for expected in (
        "services.other.hosts[0]: host 'api.proxy.localhost' is also used by service 'api'",
        "metering.ledger: must be sqlite:///PATH or postgresql://USER@HOST:PORT/DB (got a redis:// URL)",
        "metering.operator_key: not a valid secp256k1 private key",
        f"tokens.issuers[0].public_key_file: {tmp_path / 'idp.pem'}: not a PEM public key or certificate",
        "admin_listen: 127.0.0.1:8080 is also bound by listen",
    ):
        assert any(line.startswith(expected) for line in lines), (expected, run.stderr)
    # `serve` refuses the same file the same way, before binding anything.
    serve = subprocess.run([sys.executable, "-m", "gateway", "serve", str(path)],
                           capture_output=True, text=True, cwd=REPO, timeout=60)
    assert serve.returncode == 1 and serve.stderr == run.stderr
