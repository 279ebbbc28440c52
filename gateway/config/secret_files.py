"""Secrets read from files: `operator_key_file`, an issuer's `secret_file`, `upstream_auth`'s
`token_file`, `password_file` and `value_file`; the operator key from an encrypted keystore
(`operator_keystore` + `operator_keystore_password_file`).

Each `*_file` key is the file form of the key without `_file`: exactly one of the two is given, and
the file's content (one trailing newline stripped) is parsed exactly as the inline value would be,
so the rest of the gateway sees the same typed value whichever form the operator chose. A file is
read once, while the config loads (relative paths from the config's folder, as every file path);
`serve` reloads read it again. Problems name the file, never its content: a secret is never put
into a problem, a log line or a repr.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any, Callable, TypeVar

from gateway.config import values as v
from gateway.config.nodes import MISSING, Node

T = TypeVar("T")


def read_secret(raw: Any, base_dir: Path) -> str:
    """The text of the secret file named by `raw`, or ValueError saying what is wrong with it."""
    path = Path(v.non_empty(raw))
    path = path if path.is_absolute() else base_dir / path
    try:
        info = path.stat()  # follows symlinks: Kubernetes mounts a secret as a symlink to its file
    except FileNotFoundError:
        raise ValueError(f"no such file: {path}") from None
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"not a regular file: {path}")
    # Why refuse (not warn) a world-readable file: any local user or process could read the secret,
    # and a warning at start-up is easily missed while the leak goes on. Group-readable is allowed:
    # a group (root:gateway 0640) is how a secret is shared with the service's user on purpose.
    # Containers: mount secrets with mode 0400/0440 (Kubernetes `defaultMode: 0440`).
    if info.st_mode & stat.S_IROTH:
        raise ValueError(f"{path} is readable by every user (mode {stat.S_IMODE(info.st_mode):04o}): "
                         f"chmod o-r {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    # Why strip only a trailing newline: editors and `echo` add one, while other whitespace may be
    # part of a secret (the inline form keeps it too).
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise ValueError(f"{path} is empty")
    return text


def from_file(parse: Callable[[Any], T], base_dir: Path) -> Callable[[Any], T]:
    """A parser for a `*_file` key: read the file, then parse its text as the inline key's value."""
    def parse_file(raw: Any) -> T:
        return parse(read_secret(raw, base_dir))
    return parse_file


def inline_or_file(node: Node, key: str, parse: Callable[[Any], T], base_dir: Path,
                   default: Any = MISSING) -> T | None:
    """`key` or `key_file` (exactly one), parsed by `parse`; neither is `required` unless a default is given."""
    file_key = f"{key}_file"
    inline = node.get(key, parse, None)
    read = node.get(file_key, from_file(parse, base_dir), None)
    given = [k for k in (key, file_key) if node.value.get(k) not in (None, "")]
    # Why refuse both: which one wins would be a guess, and the operator may believe the other.
    if len(given) == 2:
        node.problems.append(f"{node.path}: exactly one of {key}, {file_key} (both are set)")
        return None
    if not given:
        return node.get(key, parse, default)  # reports `required` once (or returns the default)
    return inline if inline is not None else read


def keystore_key(node: Node, key: str, base_dir: Path) -> str | None:
    """`KEY` (an eth-keyfile / Web3 Secret Storage JSON file) + `KEY_password_file` -> the private key.

    Why the keystore is read as a secret too (not readable by every user): it is encrypted, but a
    weak password falls to an offline guess by whoever can copy the file."""
    password_key = f"{key}_password_file"
    keystore = node.get(key, from_file(_keystore_json, base_dir), None)
    password = node.get(password_key, lambda raw: read_secret(raw, base_dir), None)
    given = [k for k in (key, password_key) if node.value.get(k) not in (None, "")]
    if len(given) == 1:
        node.problems.append(f"{node.path}: {key} and {password_key} go together")
    if keystore is None or password is None:
        return None
    from eth_account import Account  # lazily: only a config with a keystore pays for the import

    try:
        secret = Account.decrypt(keystore, password)
    except ValueError as exc:
        if "MAC mismatch" in str(exc):  # eth-keyfile's answer to a wrong password
            node.problems.append(f"{node.at(password_key)}: does not decrypt {node.at(key)} (wrong password?)")
        else:
            node.problems.append(f"{node.at(key)}: not a keystore this gateway can decrypt ({exc})")
        return None
    except (KeyError, TypeError, NotImplementedError) as exc:
        node.problems.append(f"{node.at(key)}: not a keystore this gateway can decrypt ({type(exc).__name__}: {exc})")
        return None
    try:
        return v.private_key("0x" + bytes(secret).hex())
    except ValueError as exc:
        node.problems.append(f"{node.at(key)}: holds {exc}")
        return None


def _keystore_json(text: str) -> dict:
    try:
        document = json.loads(text)
    except ValueError:
        raise ValueError("not a JSON keystore") from None
    if not isinstance(document, dict) or not isinstance(document.get("crypto", document.get("Crypto")), dict):
        raise ValueError("not an eth-keyfile keystore (no `crypto` object)")
    return document
