"""`gateway usage`, `token revoke` and `shortfall resolve` read only the parts of the config they use: the secrets
serving needs (signing key file, upstream tokens) may be unset, as they are for an operator who only
wants the ledger (issue 15, item 4)."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.auth.state import auth_state
from gateway.cli import main
from gateway.config.load import ConfigError, load_config, load_metering
from gateway.ledger import Account
from gateway.ledger.database import SqliteDatabase
from gateway.ledger.sqlite import SqliteLedger

SUBSCRIBER = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
ACCOUNT = Account(31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3", 1, SUBSCRIBER)
# Every section but `metering` needs a variable nobody set here.
CONFIG = """
listen: "${P3_UNSET_LISTEN}"
base_domain: proxy.localhost
chains: {local: {chain_id: 31337, rpc_urls: ["${P3_UNSET_RPC}"]}}
tokens:
  own: {issuer: "http://gateway.proxy.localhost", signing_key_file: "${P3_UNSET_SIGNING_KEY_FILE}"}
services:
  elvis:
    upstream: http://127.0.0.1:9000
    upstream_auth: {type: bearer, token: "${P3_UNSET_UPSTREAM_TOKEN}"}
    protected_endpoints: ["POST /query"]
    plan: {chain: local, standard: erc1155, contract: "0x5FbDB2315678afecb367f032d93F642f64180aa3", token_id: 1}
metering:
  ledger: "sqlite:///${P3_STATE_DIR:-state}/ledger.db"
"""


async def _charge_one(path) -> None:
    db = SqliteDatabase(path)
    ledger = SqliteLedger(db)
    try:
        await ledger.open()
        reservation = await ledger.reserve(ACCOUNT, "elvis", 2, 5, time.time(), "req-1", 60.0)
        await ledger.charge(reservation, 2, 5, time.time())
    finally:
        await db.close()


@pytest.fixture
def config_file(tmp_path, monkeypatch):
    for name in ("P3_UNSET_LISTEN", "P3_UNSET_RPC", "P3_UNSET_SIGNING_KEY_FILE", "P3_UNSET_UPSTREAM_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("P3_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "state").mkdir()
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG)
    return path


def test_the_whole_config_is_refused_but_metering_alone_loads(config_file, tmp_path):
    with pytest.raises(ConfigError) as refused:
        load_config(config_file)
    assert any("P3_UNSET_SIGNING_KEY_FILE is not set" in p for p in refused.value.problems)
    assert load_metering(config_file).ledger == f"sqlite:///{tmp_path / 'state' / 'ledger.db'}"


def test_metering_alone_still_reports_its_own_problems(tmp_path, monkeypatch):
    monkeypatch.delenv("P3_UNSET_LEDGER", raising=False)
    path = tmp_path / "gateway.yaml"
    path.write_text('metering: {ledger: "${P3_UNSET_LEDGER}", settle_every: soon}\n')
    with pytest.raises(ConfigError) as refused:
        load_metering(path)
    assert refused.value.problems == [
        "metering.ledger: environment variable P3_UNSET_LEDGER is not set",
        "metering.settle_every: not a duration like 500ms, 30s, 5m, 1h, 30d (got 'soon')"]


def test_usage_prints_the_table_without_the_secrets_of_other_sections(config_file, tmp_path, capsys):
    asyncio.run(_charge_one(tmp_path / "state" / "ledger.db"))
    assert main(["usage", "--config", str(config_file)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["service", "subscriber", "calls", "charged", "settled", "pending",
                                           "shortfall"]
    assert out.splitlines()[1].split() == ["elvis", SUBSCRIBER, "1", "2", "0", "2", "0"]
    assert "total: calls 1, charged 2, settled 0, pending 2, shortfall 0" in out


def test_usage_on_a_broken_metering_section_says_so(tmp_path, capsys):
    path = tmp_path / "gateway.yaml"
    path.write_text("metering: {ledger: 'redis://x'}\n")
    assert main(["usage", "--config", str(path)]) == 1
    assert "metering.ledger: must be sqlite:///PATH" in capsys.readouterr().err


def test_token_revoke_records_with_metering_alone(config_file, tmp_path, capsys):
    assert main(["token", "revoke", "jti-1", "--config", str(config_file)]) == 0
    assert "revoked token jti-1" in capsys.readouterr().out

    async def recorded() -> list:
        db = SqliteDatabase(tmp_path / "state" / "ledger.db")
        try:
            return await auth_state(db).revocations_after(0)
        finally:
            await db.close()

    assert [(jti, subscriber) for _, jti, subscriber, _ in asyncio.run(recorded())] == [("jti-1", None)]


async def _record_shortfall(path) -> None:
    """A charge of 2 whose burn found 1 credit left on chain: a shortfall of 1 blocks the account."""
    await _charge_one(path)
    db = SqliteDatabase(path)
    ledger = SqliteLedger(db)
    try:
        await ledger.open()
        group, = await ledger.pending_groups()
        settlement = await ledger.record_settlement(group, 1, "0xop", 0, "0xa", "0xraw")
        await ledger.mark_confirmed(settlement.id, 10)
    finally:
        await db.close()


def test_shortfall_resolve_needs_the_plan_and_the_ledger_only(config_file, tmp_path, capsys):
    asyncio.run(_record_shortfall(tmp_path / "state" / "ledger.db"))
    args = ["shortfall", "resolve", "--service", "elvis", "--subscriber", SUBSCRIBER, "--note", "paid by invoice",
            "--config", str(config_file)]
    assert main(args) == 0
    assert f"resolved 1 shortfall(s) of {SUBSCRIBER} on elvis" in capsys.readouterr().out
    assert main(args) == 0
    assert "resolved 0 shortfall(s)" in capsys.readouterr().out  # nothing left open


def test_shortfall_resolve_on_an_unknown_service_says_so(config_file, capsys):
    assert main(["shortfall", "resolve", "--service", "nope", "--subscriber", SUBSCRIBER, "--note", "x",
                 "--config", str(config_file)]) == 1
    assert "services.nope.plan: no such service, or it has no plan" in capsys.readouterr().err
