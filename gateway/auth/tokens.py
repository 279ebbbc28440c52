"""Bearer-token verification: who is calling, and is the token meant for this service.

`TokenVerifier.verify` turns an `Authorization` header into a `Subscriber` or raises a
`TokenRejected` (`TokenMissing`, `TokenInvalid`, `TokenRevoked`: answered 401 with an RFC 6750
challenge; `WrongAudience`: 403; see `gateway.http.refusals`). The order is fixed: scheme,
structure, issuer, algorithm allowlist, key, signature and required claims, time claims, subject,
and only then audience, so that an unsigned or expired token is always a 401 whatever audience
it claims.

Keys come from the issuer's configuration only: a shared secret (HS256), a PEM public key, a
JWKS file, a JWKS URL (fetched async, cached, refetched at most once per 30 s on an unknown
`kid`, concurrent refetches coalesced), or the gateway's own signing key. Nothing in a token's
header (`jku`, `x5u`, `jwk`) ever selects where keys come from.

Verified tokens are cached by the SHA-256 of the token, per service, and never past `exp` plus
the leeway. All time checks use the injected clock so that the cache and the checks agree.
Revocations (`gateway.auth.revocation`) are checked on every call, after the cache: a cached
verification never outlives a revocation. The own issuer verifies with its signing key and
every previous key still configured (key rotation), chosen by `kid`.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Callable

import aiohttp
import jwt
from cachetools import LRUCache
from eth_utils import to_checksum_address

from gateway.config.model import IssuerConfig, ServiceConfig, TokensConfig
from gateway.auth.issuer import (
    ADDRESS, ASYMMETRIC_ALGORITHMS, OwnIssuer, VerificationKey, candidate_keys, load_jwks_file,
    load_public_key_file,
)
from gateway.auth.jwks import RemoteJwks
from gateway.auth.revocation import RevocationList


REQUIRED_CLAIMS = ["exp", "iss", "sub", "aud"]
B64TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")  # RFC 6750 §2.1


class TokenRejected(Exception):
    """The caller is not let in; the message (for the client, never the token) says why.
    `realm`: the service the token was presented to."""

    def __init__(self, realm: str, message: str) -> None:
        super().__init__(message)
        self.realm = realm


class TokenMissing(TokenRejected):
    """No bearer token was sent (or not in the Bearer scheme)."""


class TokenInvalid(TokenRejected):
    """A token that cannot be trusted: malformed, unsigned, unknown issuer or key, bad signature,
    missing or bad claims, expired or not yet valid."""


class TokenRevoked(TokenInvalid):
    """A genuine token, withdrawn (`gateway token revoke`): the client must get a new one."""


class WrongAudience(TokenRejected):
    """A genuine token, for another service."""


@dataclass(frozen=True)
class Subscriber:
    address: str          # checksummed 0x address from `sub`
    issuer: str
    expires_at: float     # exp
    token_id: str | None  # jti
    issued_at: float | None = None  # iat, when the token has one


@dataclass
class _Issuer:
    name: str
    algorithms: frozenset[str]
    secret: bytes | None = None
    keys: list[VerificationKey] | None = None  # static: public_key_file, jwks_file, own key
    remote: RemoteJwks | None = None
    ignore_kid: bool = False                    # single-key sources: the key is the key


class TokenVerifier:
    """Verifies bearer tokens for every service against the configured issuers."""

    def __init__(
        self, config: TokensConfig, http: aiohttp.ClientSession | None = None, clock: Callable[[], float] = time.time,
        revocations: RevocationList | None = None,
    ) -> None:
        self._clock = clock
        self._revocations = revocations
        self._leeway = float(config.leeway)
        self._http = http
        self._owns_http = False
        self._issuers = {ic.issuer: self._issuer(ic) for ic in config.issuers}
        if config.own is not None:
            own = OwnIssuer(config.own, clock=clock)
            # Why: two key sources for one name would be ambiguous. The config refuses this first
            # (gateway.config.load `_tokens`); the raises in this constructor are guards, not checks.
            if own.issuer in self._issuers:
                raise ValueError(f"issuer {own.issuer} is both tokens.own and in tokens.issuers")
            keys = own.verification_keys()
            # Why kid matching once there are several keys: each token names the key that signed it.
            self._issuers[own.issuer] = _Issuer(
                own.issuer, frozenset(k.alg for k in keys if k.alg), keys=keys, ignore_kid=len(keys) == 1
            )
        self._cache: LRUCache[tuple[str, str, str], Subscriber] | None = (
            LRUCache(maxsize=config.cache_size) if config.cache_size > 0 else None
        )

    def _issuer(self, ic: IssuerConfig) -> _Issuer:
        sources = [s for s in (ic.jwks_url, ic.jwks_file, ic.public_key_file, ic.secret) if s is not None]
        if len(sources) != 1:
            raise ValueError(f"issuer {ic.issuer}: exactly one of jwks_url, jwks_file, public_key_file, secret")
        if ic.secret is not None:
            if len(ic.secret.encode()) < 32:
                raise ValueError(f"issuer {ic.issuer}: the HS256 secret must be at least 32 bytes")
            # Why: HMAC is only ever verified with a configured shared secret, never with a key
            # an attacker can read (the "HS256 signed with the public key" confusion).
            return _Issuer(ic.issuer, frozenset(ic.algorithms) & {"HS256"}, secret=ic.secret.encode())
        # Why: an asymmetric issuer never accepts HS*/none, whatever its allowlist says.
        algorithms = frozenset(ic.algorithms) & ASYMMETRIC_ALGORITHMS
        if ic.public_key_file is not None:
            return _Issuer(ic.issuer, algorithms, keys=[load_public_key_file(ic.public_key_file)], ignore_kid=True)
        if ic.jwks_file is not None:
            return _Issuer(ic.issuer, algorithms, keys=load_jwks_file(ic.jwks_file))
        return _Issuer(ic.issuer, algorithms, remote=RemoteJwks(str(ic.jwks_url), self._session, self._clock))

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http, self._owns_http = aiohttp.ClientSession(), True
        return self._http

    async def close(self) -> None:
        """Close the HTTP session if this verifier created it (one passed in is the caller's)."""
        if self._owns_http and self._http is not None:
            await self._http.close()
            self._http, self._owns_http = None, False

    async def verify(self, authorization: str | None, service: ServiceConfig, public_url: str) -> Subscriber:
        token = _bearer_token(authorization, service)
        key = (hashlib.sha256(token.encode()).hexdigest(), service.id, public_url)
        cached = self._cache.get(key) if self._cache is not None else None
        if cached is not None:
            # Why: a cached answer is exactly as valid as re-verifying would be, never longer.
            if self._clock() < cached.expires_at + self._leeway:
                return await self._not_revoked(cached, service)
            self._cache.pop(key, None)  # type: ignore[union-attr]
        subscriber = await self._verify(token, service, public_url)
        if self._cache is not None:
            self._cache[key] = subscriber
        return await self._not_revoked(subscriber, service)

    async def _not_revoked(self, who: Subscriber, service: ServiceConfig) -> Subscriber:
        revocations = self._revocations
        if revocations is not None and await revocations.is_revoked(who.address, who.token_id, who.issued_at):
            # Why 401 with its own code: the token is genuine but withdrawn; the client must get a new one.
            raise TokenRevoked(service.id, "token revoked")
        return who

    async def _verify(self, token: str, service: ServiceConfig, public_url: str) -> Subscriber:
        if token.count(".") == 4:  # Why: JWE (Nevermined's format) proves no issuer signature to us.
            raise _invalid(service, "encrypted tokens (JWE) are not accepted; use a signed JWT")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            raise _invalid(service, "malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            # Why: an unsigned token proves nothing; refused before anything else is looked at.
            raise _invalid(service, "unsigned tokens are not accepted")
        if "crit" in header:
            # Why: RFC 7515 §4.1.11 requires refusing critical extensions we do not implement.
            raise _invalid(service, "critical header extensions are not supported")
        issuer = self._issuers.get(unverified.get("iss")) if isinstance(unverified.get("iss"), str) else None
        if issuer is None:
            # Why: only configured issuers (exact match) are trusted; the token's value is not echoed.
            raise _invalid(service, "unknown or missing issuer")
        if alg not in issuer.algorithms:
            # Why: the issuer's configured allowlist decides, never the token (RFC 8725 §3.1).
            raise _invalid(service, f"algorithm not allowed for issuer {issuer.name}")
        key = issuer.secret
        if key is None:
            key = await self._public_key(issuer, header.get("kid"), alg, service)
        try:
            claims = jwt.decode(
                token, key, algorithms=[alg], issuer=issuer.name,
                # Why: time claims are checked below with our clock (the cache uses the same clock);
                # audience after expiry, so that a stale token for another service is still a 401.
                options={"require": REQUIRED_CLAIMS, "verify_exp": False, "verify_nbf": False,
                         "verify_iat": False, "verify_aud": False},
            )
        except jwt.InvalidSignatureError:
            raise _invalid(service, "signature verification failed") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _invalid(service, f"missing required claim {exc.claim!r}") from None
        except jwt.exceptions.InvalidSubjectError:
            raise _invalid(service, "sub must be an Ethereum address (0x + 40 hex digits)") from None
        except jwt.PyJWTError:  # Why: anything else PyJWT rejects is a token we cannot trust.
            raise _invalid(service, "malformed token") from None
        expires_at = self._check_times(claims, service)
        sub = claims["sub"]
        if not isinstance(sub, str) or not ADDRESS.fullmatch(sub):
            # Why: the subscriber is who pays; anything but an address cannot be checked on chain.
            raise _invalid(service, "sub must be an Ethereum address (0x + 40 hex digits)")
        audiences = [claims["aud"]] if isinstance(claims["aud"], str) else claims["aud"]
        if not isinstance(audiences, list) or not audiences or not all(isinstance(a, str) for a in audiences):
            # Why 401: an audience we cannot read is a malformed token, not a token for someone else.
            raise _invalid(service, "aud must be a string or a non-empty list of strings")
        accepted = {service.id, public_url.rstrip("/")}
        if service.mcp is not None:  # Why: an RFC 8707 token for the MCP endpoint names that URL
            accepted.add(public_url.rstrip("/") + service.mcp.path)
        if not any(a.rstrip("/") in accepted for a in audiences):
            # Why 403, not 401: the token is genuine, it is just for another service.
            raise WrongAudience(service.id, f"token is not for service {service.id}")
        jti, iat = claims.get("jti"), claims.get("iat")
        return Subscriber(to_checksum_address(sub), issuer.name, expires_at, jti if isinstance(jti, str) else None,
                          float(iat) if isinstance(iat, (int, float)) and not isinstance(iat, bool) else None)

    async def _public_key(self, issuer: _Issuer, kid: Any, alg: str, service: ServiceConfig) -> Any:
        keys = issuer.keys if issuer.remote is None else await issuer.remote.current()
        candidates = candidate_keys(keys or [], kid, alg, issuer.ignore_kid)
        # Why: an unknown kid usually means the issuer rotated keys; one rate-limited refetch.
        if not candidates and issuer.remote is not None and await issuer.remote.refetch_for_unknown_kid():
            candidates = candidate_keys(issuer.remote.keys or [], kid, alg, issuer.ignore_kid)
        if len(candidates) != 1:
            # Why: no key, or several that could have signed a kid-less token: never guess.
            if candidates:
                raise _invalid(service, "several keys of the issuer match the token; add a distinct kid")
            raise _invalid(service, "no signing key of the issuer matches the token's kid and algorithm")
        return candidates[0].key

    def _check_times(self, claims: dict[str, Any], service: ServiceConfig) -> float:
        now, leeway = self._clock(), self._leeway
        times = {}
        for name in ("exp", "nbf", "iat"):
            value = claims.get(name)
            if name != "exp" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise _invalid(service, f"{name} must be a number (seconds since the epoch)")
            times[name] = float(value)
        # Why the leeway on every side: issuer and gateway clocks drift (Envoy allows 60 s).
        if times["exp"] <= now - leeway:
            raise _invalid(service, "token expired")
        if times.get("nbf", -math.inf) > now + leeway:
            raise _invalid(service, "token not yet valid (nbf)")
        if times.get("iat", -math.inf) > now + leeway:
            raise _invalid(service, "token issued in the future (iat)")
        return times["exp"]


def _bearer_token(authorization: str | None, service: ServiceConfig) -> str:
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        # Why no error code in the challenge: RFC 6750 §3.1, a request without credentials.
        raise TokenMissing(service.id, "send Authorization: Bearer <token>")
    if not B64TOKEN.fullmatch(token):
        # Why: RFC 6750 b64token charset; also keeps non-ASCII bytes away from hashing and parsing.
        raise _invalid(service, "malformed token")
    return token


def _invalid(service: ServiceConfig, description: str) -> TokenInvalid:
    return TokenInvalid(service.id, description)
