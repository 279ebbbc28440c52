"""Secrets from files (`gateway.config.secret_files`): `metering.operator_key_file`, an issuer's
`secret_file`, `upstream_auth`'s `token_file` / `password_file` / `value_file`, and the operator
key from an encrypted keystore (`operator_keystore` + `operator_keystore_password_file`).

Each file key loads the same value as its inline form (so settlement, the token verifier and the
upstream forwarder see no difference), relative to the config's folder; each bad file is one
problem, with its YAML path, in `gateway check-config`; a secret never appears in a problem.
"""

from __future__ import annotations

import json
from pathlib import Path

import jwt
import pytest
import yaml
from eth_account import Account

from gateway.auth.tokens import TokenVerifier
from gateway.cli import main
from gateway.config.load import ConfigError, load_config, load_metering

OPERATOR_KEY = "0x" + "11" * 32
HMAC = "s3cret-" + "k" * 30  # 37 bytes
ISS = "https://idp.test"

# key -> (YAML path of its section, the inline value, how the loaded config shows it)
KEYS = {
    "operator_key": ("metering", OPERATOR_KEY, lambda c: c.metering.operator_key),
    "secret": ("tokens.issuers[0]", HMAC, lambda c: c.tokens.issuers[0].secret),
    "token": ("services.elvis.upstream_auth", "tok-1", lambda c: c.services["elvis"].upstream_auth.header_value),
    "password": ("services.basic.upstream_auth", "pw-1", lambda c: c.services["basic"].upstream_auth.header_value),
    "value": ("services.header.upstream_auth", "val-1", lambda c: c.services["header"].upstream_auth.header_value),
}


def config_with(**secrets: str) -> dict:
    """A config using every secret key; `secrets` replaces some with other keys (e.g. token_file=...)."""
    issuer = {"issuer": ISS, "algorithms": ["HS256"], "secret": HMAC}
    elvis = {"type": "bearer", "token": "tok-1"}
    basic = {"type": "basic", "username": "u", "password": "pw-1"}
    header = {"type": "header", "name": "X-Key", "value": "val-1"}
    metering = {"ledger": "sqlite:///ledger.db", "operator_key": OPERATOR_KEY}
    for key, value in secrets.items():
        section = {"operator_key": metering, "secret": issuer, "token": elvis, "password": basic,
                   "value": header}[key.removesuffix("_file")]
        if key.endswith("_file"):
            section.pop(key.removesuffix("_file"))
        section[key] = value
    return {
        "base_domain": "proxy.localhost",
        "tokens": {"issuers": [issuer]},
        "services": {"elvis": {"upstream": "http://127.0.0.1:9000", "upstream_auth": elvis},
                     "basic": {"upstream": "http://127.0.0.1:9001", "upstream_auth": basic},
                     "header": {"upstream": "http://127.0.0.1:9002", "upstream_auth": header}},
        "metering": metering,
    }


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def secret_file(path: Path, content: str | bytes, mode: int = 0o600) -> Path:
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    path.chmod(mode)
    return path


def check_config(path: Path, capsys) -> tuple[int, list[str]]:
    code = main(["check-config", str(path)])
    captured = capsys.readouterr()
    return code, [line.strip() for line in captured.err.splitlines() if line.startswith("  ")]


@pytest.mark.parametrize("key", list(KEYS))
def test_a_file_key_loads_what_its_inline_form_loads(tmp_path, key):
    section, inline, shown = KEYS[key]
    (tmp_path / "secrets").mkdir()
    secret_file(tmp_path / "secrets" / key, inline + "\n")  # the newline `echo` adds is stripped
    from_file = load_config(write(tmp_path / "gateway.yaml", config_with(**{f"{key}_file": f"secrets/{key}"})))
    written = load_config(write(tmp_path / "inline.yaml", config_with()))
    assert shown(from_file) == shown(written)
    assert from_file == written.__class__(**{**written.__dict__, "source": from_file.source})


def test_the_loaded_secrets_work_where_they_are_used(tmp_path):
    secret_file(tmp_path / "op", OPERATOR_KEY + "\r\n")
    secret_file(tmp_path / "hmac", HMAC, mode=0o640)  # group-readable is allowed
    data = config_with(operator_key_file="op", secret_file=str(tmp_path / "hmac"))  # absolute works too
    config = load_config(write(tmp_path / "g.yaml", data))
    assert Account.from_key(config.metering.operator_key).address == Account.from_key(OPERATOR_KEY).address
    verifier = TokenVerifier(config.tokens)
    assert verifier  # built from the file's secret: the 32-byte rule of the verifier holds
    assert jwt.decode(jwt.encode({"iss": ISS}, HMAC, algorithm="HS256"), config.tokens.issuers[0].secret,
                      algorithms=["HS256"])["iss"] == ISS
    assert load_metering(tmp_path / "g.yaml").operator_key == OPERATOR_KEY  # `gateway usage` reads it too


BAD_FILES = {
    "missing": (None, 0o600, "no such file: {path}"),
    "empty": ("", 0o600, "{path} is empty"),
    "only a newline": ("\n", 0o600, "{path} is empty"),
    "world-readable": ("x" * 40, 0o644, "{path} is readable by every user (mode 0644): chmod o-r {path}"),
    "not UTF-8": (b"\xff\xfe" * 20, 0o600, "{path} is not UTF-8 text"),
}


@pytest.mark.parametrize("key", list(KEYS))
@pytest.mark.parametrize("bad", list(BAD_FILES))
def test_a_bad_secret_file_is_one_problem_with_its_path(tmp_path, capsys, key, bad):
    content, mode, message = BAD_FILES[bad]
    path = tmp_path / "the-secret"
    if content is not None:
        secret_file(path, content, mode)
    config = write(tmp_path / "gateway.yaml", config_with(**{f"{key}_file": "the-secret"}))
    code, problems = check_config(config, capsys)
    section = KEYS[key][0]
    assert code == 1
    assert problems == [f"{section}.{key}_file: " + message.format(path=path)]


def test_an_unreadable_secret_file_is_one_problem(tmp_path, capsys, monkeypatch):
    path, read_bytes = secret_file(tmp_path / "op", OPERATOR_KEY), Path.read_bytes

    def refuse(p: Path) -> bytes:  # chmod 0 is no test when the suite runs as root
        if p == path:
            raise PermissionError(13, "Permission denied", str(p))
        return read_bytes(p)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    code, problems = check_config(write(tmp_path / "g.yaml", config_with(operator_key_file="op")), capsys)
    assert (code, problems) == (1, [f"metering.operator_key_file: cannot read {path}: Permission denied"])


@pytest.mark.parametrize("key", list(KEYS))
def test_both_forms_at_once_are_refused(tmp_path, key):
    secret_file(tmp_path / "s", KEYS[key][1])
    data = config_with(**{f"{key}_file": "s"})
    section = data  # put the inline value back beside its file
    for part in KEYS[key][0].replace("[0]", ".0").split("."):
        section = section[int(part)] if part.isdigit() else section[part]
    section[key] = KEYS[key][1]
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path / "g.yaml", data))
    assert exc.value.problems == [f"{KEYS[key][0]}: exactly one of {key}, {key}_file (both are set)"]


def test_file_content_is_checked_like_the_inline_value_and_never_shown(tmp_path, capsys):
    short, bad_key, two_lines = "short-but-secret", "0x" + "zz" * 32, "line1\nline2"
    secret_file(tmp_path / "short", short + "\n")  # 32 bytes are counted without the newline
    secret_file(tmp_path / "key", bad_key)
    secret_file(tmp_path / "token", two_lines)
    data = config_with(secret_file="short", operator_key_file="key", token_file="token")
    code, problems = check_config(write(tmp_path / "g.yaml", data), capsys)
    assert code == 1
    assert problems == [
        "tokens.issuers[0].secret_file: must be at least 32 bytes",
        "services.elvis.upstream_auth.token_file: must not contain CR, LF or NUL",
        "metering.operator_key_file: not a private key (0x + 64 hex digits)",
    ]
    for secret in (short, bad_key, "line1"):
        assert not any(secret in p for p in problems)


def test_a_required_secret_given_in_neither_form_is_required_once():
    from gateway.config.load import parse_config

    data = config_with()
    del data["services"]["elvis"]["upstream_auth"]["token"]
    with pytest.raises(ConfigError) as exc:
        parse_config(data, {})
    assert exc.value.problems == ["services.elvis.upstream_auth.token: required"]


# --- the operator key from an encrypted keystore (eth-keyfile JSON + a password file) ---------------

def keystore(tmp_path: Path, password: str = "pass phrase", key: str = OPERATOR_KEY) -> dict:
    """A metering section reading `key` from a keystore (cheap scrypt: a test, not a vault)."""
    secret_file(tmp_path / "operator.json", json.dumps(Account.encrypt(key, password, iterations=2**4)))
    secret_file(tmp_path / "operator.password", password + "\n")
    return {"ledger": "sqlite:///ledger.db", "operator_keystore": "operator.json",
            "operator_keystore_password_file": "operator.password"}


def test_a_keystore_loads_the_operator_key(tmp_path):
    data = config_with() | {"metering": keystore(tmp_path)}
    assert load_config(write(tmp_path / "g.yaml", data)).metering.operator_key == OPERATOR_KEY


def test_a_wrong_keystore_password_is_one_problem(tmp_path, capsys):
    metering = keystore(tmp_path)
    secret_file(tmp_path / "operator.password", "not it")
    code, problems = check_config(write(tmp_path / "g.yaml", config_with() | {"metering": metering}), capsys)
    assert (code, problems) == (1, ["metering.operator_keystore_password_file: does not decrypt "
                                    "metering.operator_keystore (wrong password?)"])


@pytest.mark.parametrize("change, problem", [
    ({"operator_keystore_password_file": None},
     "metering: operator_keystore and operator_keystore_password_file go together"),
    ({"operator_key": OPERATOR_KEY}, "metering: exactly one of operator_key, operator_key_file, operator_keystore"),
])
def test_a_keystore_needs_its_password_and_no_other_key(tmp_path, change, problem):
    data = config_with() | {"metering": keystore(tmp_path) | change}
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path / "g.yaml", data))
    assert exc.value.problems == [problem]


def test_a_file_that_is_no_keystore_is_one_problem(tmp_path):
    metering = keystore(tmp_path)
    secret_file(tmp_path / "operator.json", '{"version": 3}')
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path / "g.yaml", config_with() | {"metering": metering}))
    assert exc.value.problems == ["metering.operator_keystore: not an eth-keyfile keystore (no `crypto` object)"]


def test_a_keystore_this_gateway_cannot_decrypt_is_one_problem(tmp_path):
    metering = keystore(tmp_path)
    document = json.loads((tmp_path / "operator.json").read_text())
    document["crypto"]["kdf"] = "rot13"
    secret_file(tmp_path / "operator.json", json.dumps(document))
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path / "g.yaml", config_with() | {"metering": metering}))
    assert exc.value.problems == ["metering.operator_keystore: not a keystore this gateway can decrypt "
                                  "(EthKeyfileTypeError: Unsupported key derivation function: rot13)"]
