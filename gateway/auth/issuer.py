"""The gateway's own token issuer, and the key helpers `gateway.auth.tokens` shares with it.

`OwnIssuer` signs subscriber tokens (`gateway token issue`, Sign-in with Ethereum) with a PEM
private key: EC P-256 signs ES256, Ed25519 signs EdDSA. Nothing else is accepted, so the
algorithm always follows from the key and can never be chosen by a caller or a token.

Key rotation: `signing_key_file` signs; every key in `previous_key_files` still verifies and is
still published in the JWKS until the operator removes it from the config. Each key's `kid` is
its RFC 7638 thumbprint, so a token names exactly the key that signed it.

The helpers below (JWK conversion, RFC 7638 thumbprints, "does this key fit this algorithm",
loading public keys from PEM files and JWKS documents) are the key-handling half of token
verification; they live here so that `gateway.auth.tokens` stays about the decision itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509 import load_pem_x509_certificate
from eth_utils import to_checksum_address
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from gateway.config.model import OwnIssuerConfig

ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
MIN_RSA_BITS = 2048
SIGNING_KINDS = ("ES256", "EdDSA")
# Per algorithm: the key type (and EC curve) it is defined for. A key is used only with an
# algorithm it fits, so a JWKS entry or PEM file can never be coerced into another algorithm.
_EC_CURVES = {"ES256": ec.SECP256R1, "ES256K": ec.SECP256K1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}
_RSA_ALGS = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
ASYMMETRIC_ALGORITHMS = frozenset(_EC_CURVES) | _RSA_ALGS | {"EdDSA"}
_FROM_JWK = {"EC": ECAlgorithm.from_jwk, "RSA": RSAAlgorithm.from_jwk, "OKP": OKPAlgorithm.from_jwk}

PublicKey = Any  # a cryptography public key object


def key_fits(algorithm: str, key: PublicKey) -> bool:
    """True when `key` is the kind of public key `algorithm` is defined for."""
    if algorithm in _EC_CURVES:
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _EC_CURVES[algorithm])
    if algorithm in _RSA_ALGS:
        # Why: RSA below 2048 bits is factorable in practice; such a key verifies nothing.
        return isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_BITS
    if algorithm == "EdDSA":
        return isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey))
    # Why: HS*/none or anything unknown never fits a public key (algorithm confusion).
    return False


def public_key_to_jwk(key: PublicKey) -> dict[str, Any]:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return dict(ECAlgorithm.to_jwk(key, as_dict=True))
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return dict(OKPAlgorithm.to_jwk(key, as_dict=True))
    if isinstance(key, rsa.RSAPublicKey):
        return dict(RSAAlgorithm.to_jwk(key, as_dict=True))
    raise ValueError(f"unsupported public key type {type(key).__name__}")


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url without padding) of a public JWK."""
    required = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}[jwk["kty"]]
    canonical = json.dumps({k: jwk[k] for k in required}, sort_keys=True, separators=(",", ":"))
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


@dataclass(frozen=True)
class VerificationKey:
    """One public key an issuer signs with: `kid` and `alg` as published (either may be None)."""

    key: PublicKey
    kid: str | None = None
    alg: str | None = None

    def usable_for(self, algorithm: str) -> bool:
        # Why: a JWK that names its `alg` is only for that algorithm (RFC 7517 §4.4).
        return (self.alg is None or self.alg == algorithm) and key_fits(algorithm, self.key)


def candidate_keys(keys: list[VerificationKey], kid: str | None, alg: str, ignore_kid: bool) -> list[VerificationKey]:
    """Keys that may have signed a token with this kid and alg (a kid-less token: any that fits)."""
    if kid is not None and not ignore_kid:
        return [k for k in keys if k.kid == kid and k.usable_for(alg)]
    return [k for k in keys if k.usable_for(alg)]


def load_public_key_file(path: Path) -> VerificationKey:
    """A PEM public key (or certificate) file; `kid` is not known, so it is never matched."""
    data = Path(path).read_bytes()
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = load_pem_x509_certificate(data).public_key()
        except ValueError:
            raise ValueError(f"{path}: not a PEM public key or certificate") from None
    return VerificationKey(key=key)


def load_jwks_file(path: Path) -> list[VerificationKey]:
    try:
        return parse_jwks(json.loads(Path(path).read_bytes()))
    except ValueError as exc:  # JSON syntax errors included
        raise ValueError(f"{path}: {exc}") from None


def parse_jwks(document: Any) -> list[VerificationKey]:
    """The usable signing keys of a JWKS document; raises ValueError if it is not a JWKS at all."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError('not a JWKS: expected {"keys": [...]}')
    keys = []
    for jwk in document["keys"]:
        if not isinstance(jwk, dict) or jwk.get("kty") not in _FROM_JWK:
            continue  # Why: symmetric ("oct") and unknown key types never verify our tokens.
        if jwk.get("use", "sig") != "sig":
            continue  # Why: an encryption key is not a signing key (RFC 7517 §4.2).
        try:
            key = _FROM_JWK[jwk["kty"]](jwk)
        except (jwt.exceptions.InvalidKeyError, ValueError, TypeError, KeyError):
            continue  # Why: one malformed entry must not take down the issuer's other keys.
        # Why: a JWKS that leaks private keys is still only used for verifying.
        key = key.public_key() if callable(getattr(key, "public_key", None)) else key
        kid, alg = jwk.get("kid"), jwk.get("alg")
        keys.append(VerificationKey(key, kid if isinstance(kid, str) else None, alg if isinstance(alg, str) else None))
    return keys


def load_private_key(path: str | Path) -> ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey:
    """The signing key in a PEM file: EC P-256 or Ed25519, unencrypted; ValueError otherwise."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read signing key {path}: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ValueError(f"{path}: password-protected keys are not supported") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"{path}: not a PEM private key") from None
    signing_algorithm(key, path)
    return key  # type: ignore[return-value]


def signing_algorithm(key: Any, path: str | Path = "signing key") -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    kind = f"EC {key.curve.name}" if isinstance(key, ec.EllipticCurvePrivateKey) else type(key).__name__
    raise ValueError(f"{path}: {kind} key not supported; the signing key must be EC P-256 (ES256) or Ed25519 (EdDSA)")


def check_signing_key(path: str | Path) -> str | None:
    """For config validation: a message saying what is wrong with the key file, or None."""
    try:
        load_private_key(path)
    except ValueError as exc:
        return str(exc)
    return None


def generate_signing_key(path: Path, kind: str = "ES256") -> None:
    """Write a new PKCS8 PEM private key readable by its owner only; never overwrites a file."""
    if kind == "ES256":
        key: Any = ec.generate_private_key(ec.SECP256R1())
    elif kind == "EdDSA":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"unsupported key kind {kind!r}; use one of {', '.join(SIGNING_KINDS)}")
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _make_private_folders(path.parent)
    # Why O_EXCL: replacing a signing key silently invalidates every token issued with it.
    # Why 0600 at creation (not chmod after): the key is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask may only have narrowed it; make it exact
        os.write(fd, pem)
    finally:
        os.close(fd)


def _make_private_folders(folder: Path) -> None:
    """Create `folder` and its missing parents, each 0700; folders that exist are left as they are.

    Why 0700: a folder made for a private key (`secrets/`) holds private keys only. Why not touch
    existing folders: they are the operator's (the project, their home), with modes of their own."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        try:
            made.mkdir(mode=0o700)
        except FileExistsError:  # created meanwhile by someone else: theirs, left as it is
            continue
        os.chmod(made, 0o700)  # mkdir's mode is narrowed by the umask; make it exact


class OwnIssuer:
    """Signs the gateway's own subscriber tokens."""

    def __init__(self, config: OwnIssuerConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.issuer = config.issuer
        self._clock = clock
        self._key = load_private_key(config.signing_key_file)
        self.algorithm = signing_algorithm(self._key, config.signing_key_file)
        self.public_key = self._key.public_key()
        self.kid = jwk_thumbprint(public_key_to_jwk(self.public_key))
        self._keys = [self.verification_key()]
        for path in config.previous_key_files:
            key = load_private_key(path)
            previous = VerificationKey(key.public_key(), jwk_thumbprint(public_key_to_jwk(key.public_key())),
                                       signing_algorithm(key, path))
            # Why skip a repeated key: one kid must name one key, or verification would be ambiguous.
            if all(k.kid != previous.kid for k in self._keys):
                self._keys.append(previous)

    def issue(self, subscriber: str, audience: list[str], ttl: float | None = None, jti: str | None = None) -> str:
        if not isinstance(subscriber, str) or not ADDRESS.fullmatch(subscriber):
            raise ValueError("subscriber must be an Ethereum address (0x + 40 hex digits)")
        if isinstance(audience, str) or not audience or not all(isinstance(a, str) and a for a in audience):
            raise ValueError("audience must be a non-empty list of service ids or public URLs")
        lifetime = self.config.ttl if ttl is None else ttl
        if lifetime <= 0:
            raise ValueError("ttl must be positive")
        now = self._clock()
        claims = {
            "iss": self.issuer,
            "sub": to_checksum_address(subscriber),
            "aud": list(audience),
            "iat": int(now),
            "nbf": int(now),
            "exp": int(now + lifetime),
            "jti": jti or uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._key, algorithm=self.algorithm, headers={"kid": self.kid})

    def verification_key(self) -> VerificationKey:
        """The current signing key's public half."""
        return VerificationKey(key=self.public_key, kid=self.kid, alg=self.algorithm)

    def verification_keys(self) -> list[VerificationKey]:
        """Every key that verifies: the signing key first, then the previous keys still listed."""
        return list(self._keys)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [_jwk(k) for k in self._keys]}


def _jwk(key: VerificationKey) -> dict[str, Any]:
    return {**public_key_to_jwk(key.key), "kid": key.kid, "use": "sig", "alg": key.alg}
