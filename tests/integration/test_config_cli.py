"""`gateway check-config` as a process: every problem printed at once with exit 1, and the example
config accepted. The loader itself is tested in-process in tests/unit/test_config.py."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from gateway.dev.process import REPO
from gateway.auth.issuer import generate_signing_key


def test_check_config_cli_prints_all_problems_and_exits_1(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text(textwrap.dedent("""
        base_domain: proxy.localhost
        services:
          elvis:
            upstream: ftp://nowhere
            plan: {chain: local, contract: "0xZZ", token_id: 1}
            protected_endpoints: ["POST /query"]
    """))
    run = subprocess.run([sys.executable, "-m", "gateway", "check-config", "--config", str(broken)],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 1
    for fragment in ("services.elvis.upstream: not an http(s) URL", "services.elvis.plan.contract: not an address",
                     "services.elvis.plan.chain: no chain named 'local'", "tokens: protected endpoints need"):
        assert fragment in run.stderr, run.stderr


def test_check_config_cli_accepts_the_example(tmp_path):
    key = tmp_path / "key.pem"
    generate_signing_key(key, "ES256")
    run = subprocess.run([sys.executable, "-m", "gateway", "check-config", "config/gateway.yaml"],
                         capture_output=True, text=True, cwd=REPO,
                         env={"PATH": "/usr/bin:/bin", "GATEWAY_SIGNING_KEY_FILE": str(key), "ELVIS_UPSTREAM_TOKEN": "x"})
    assert run.returncode == 0, run.stderr
    assert "ok (1 service(s): elvis)" in run.stdout
