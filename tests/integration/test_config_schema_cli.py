"""`gateway config-schema` as a process prints the schema the loader is checked against in
tests/unit/test_config_schema.py."""

from __future__ import annotations

import json
import subprocess
import sys

from gateway.config.schema import config_schema
from gateway.dev.process import REPO
SCHEMA = config_schema()


def test_config_schema_cli_prints_the_schema():
    run = subprocess.run([sys.executable, "-m", "gateway", "config-schema"], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == json.loads(json.dumps(SCHEMA))
