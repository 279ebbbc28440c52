"""`gateway serve` as a real process on a config file, in front of the example plugin: it can be
killed and started again on the same ledger (crash safety, workers, the hardened-edge tests)."""

from __future__ import annotations

import json
import sqlite3
import sys
import urllib.error
import urllib.request

import yaml

from gateway.auth.issuer import OwnIssuer
from gateway.config.load import load_config
from gateway.dev.chain import free_port
from gateway.dev.process import ChildProcess
from gateway.ledger.database import sqlite_path
from tests.support.stack import DEV_ACCOUNTS, HOST, SUBSCRIBER, base_config


class Served:
    """`gateway serve` on a config file; can be killed and started again on the same ledger."""

    def __init__(self, chain, plugin, signing_key, tmp_path, workers: int = 1, ledger: str | None = None) -> None:
        """`ledger`: another ledger URL (a PostgreSQL one shared by replicas) than a file in tmp_path."""
        self.port, self.admin = free_port(), free_port()
        data = base_config(chain, plugin, signing_key)
        data.update(listen=f"127.0.0.1:{self.port}", admin_listen=f"127.0.0.1:{self.admin}", workers=workers)
        data["metering"] |= {"operator_key": DEV_ACCOUNTS[0][1], "settle_every": "1h"}
        if ledger is not None:
            data["metering"]["ledger"] = ledger
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.path = tmp_path / "gateway.yaml"
        self.path.write_text(yaml.safe_dump(data))
        self.config = load_config(self.path)
        self.token = OwnIssuer(self.config.tokens.own).issue(SUBSCRIBER, ["elvis"])
        self.child: ChildProcess | None = None

    def configure(self, change) -> None:
        """Edit the config file before `start`: `change(data)` mutates the parsed YAML."""
        data = yaml.safe_load(self.path.read_text())
        change(data)
        self.path.write_text(yaml.safe_dump(data))
        self.config = load_config(self.path)

    def wait_until_listening(self, slot: int, start: int = 0) -> int:
        """The pid of the worker in `slot` once it listens (log lines from index `start`)."""
        line = self.child.wait_for(rf'(?=.*"event": "listening")(?=.*"worker": {slot}\b)', timeout=30,
                                   start=start).string
        return json.loads(line)["pid"]

    def start(self, crash_at: str | None = None) -> None:
        env = {"GATEWAY_CRASH_AT": crash_at} if crash_at else {"GATEWAY_CRASH_AT": ""}
        self.child = ChildProcess([sys.executable, "-m", "gateway", "serve", "--config", str(self.path)],
                                  ready=r'"event": "listening"', env=env)

    def call(self, path: str = "/ask", body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
        status, headers, _ = self.call_with_body(path, body, token)
        return status, headers

    def call_with_body(self, path: str = "/ask", body: dict | None = None,
                       token: str | None = None) -> tuple[int, dict, bytes]:
        data = json.dumps(body or {"question": "what happens on the blue highway"}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method="POST",
                                     headers={"Host": HOST, "Authorization": f"Bearer {token or self.token}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()

    def settle(self) -> dict:
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin}/settle", data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read())

    def ledger(self, sql: str) -> list[tuple]:
        with sqlite3.connect(sqlite_path(self.config.metering.ledger)) as conn:
            return conn.execute(sql).fetchall()

    def stop(self) -> None:
        if self.child:
            self.child.stop()
