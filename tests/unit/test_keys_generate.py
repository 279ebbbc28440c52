"""`gateway keys generate PATH`: missing folders are created private (0700), the key is 0600, and a
path that cannot be written is one clear line on stderr, never a traceback."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from gateway.auth.issuer import load_private_key
from gateway.cli import main


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_missing_secrets_folder_is_created_private(tmp_path, capsys):
    key = tmp_path / "secrets" / "signing-key.pem"
    assert main(["keys", "generate", str(key)]) == 0
    assert mode(key.parent) == 0o700
    assert mode(key) == 0o600
    load_private_key(key)  # a usable key
    assert f"wrote ES256 signing key to {key}" in capsys.readouterr().out


def test_every_missing_parent_is_private_and_existing_folders_keep_their_mode(tmp_path):
    tmp_path.chmod(0o755)
    key = tmp_path / "deploy" / "secrets" / "k.pem"
    assert main(["keys", "generate", "--type", "EdDSA", str(key)]) == 0
    assert mode(tmp_path / "deploy") == mode(tmp_path / "deploy" / "secrets") == 0o700
    assert mode(tmp_path) == 0o755  # the operator's folder: not ours to change


def test_the_folder_is_private_whatever_the_umask(tmp_path):
    old = os.umask(0o000)  # the most permissive umask: mkdir alone would give 0777
    try:
        assert main(["keys", "generate", str(tmp_path / "s" / "k.pem")]) == 0
    finally:
        os.umask(old)
    assert mode(tmp_path / "s") == 0o700
    assert mode(tmp_path / "s" / "k.pem") == 0o600


def test_an_existing_key_is_never_overwritten(tmp_path, capsys):
    key = tmp_path / "secrets" / "k.pem"
    assert main(["keys", "generate", str(key)]) == 0
    before = key.read_bytes()
    assert main(["keys", "generate", str(key)]) == 1
    assert key.read_bytes() == before
    assert "exists: a signing key is never overwritten" in capsys.readouterr().err


def test_a_path_that_cannot_be_written_is_one_line_without_traceback(tmp_path):
    (tmp_path / "secrets").write_text("a file, not a folder")
    done = subprocess.run([sys.executable, "-m", "gateway", "keys", "generate", str(tmp_path / "secrets" / "k.pem")],
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"cannot write {tmp_path / 'secrets' / 'k.pem'}: Not a directory"]
