"""Who is asking, and what they may see and do (roles of the commons).

Roles: ``anonymous`` reads open data; ``contributor`` also stores (STOW-RS, C-STORE);
``evaluator`` also reads sequestered data; ``admin`` reads everything, quarantine included, and
runs the admin operations (release states, sequestration, clinical import, quarantine, delete).

HTTP callers present ``Authorization: Bearer TOKEN``; the configuration holds only each token's
SHA-256 (``[[auth.tokens]]``). With no token configured the server is single-user: every caller is
admin (and ``serve`` listens on loopback only unless ``[http] allow_unauthenticated``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web

from archive.config import AeRoleConfig, Config, JwtConfig, TokenConfig

_JWKS_REFRESH = 60.0  # seconds between fetches of the key set for an unknown key id
log = logging.getLogger("archive.auth")

ANONYMOUS, CONTRIBUTOR, EVALUATOR, ADMIN = "anonymous", "contributor", "evaluator", "admin"
# "pending": stored, not yet released as open nor sequestered (archive.release); admin only.
OPEN, SEQUESTERED, QUARANTINED, PENDING = "open", "sequestered", "quarantined", "pending"
STATES = (OPEN, SEQUESTERED, QUARANTINED, PENDING)


@dataclass(frozen=True)
class Visibility:
    """The release states of the patients a caller may see. Reads of the index default to
    PUBLIC, so a read that forgets to pass the caller's shows less, never more."""

    states: frozenset[str]

    @property
    def everything(self) -> bool:
        return self.states >= set(STATES)


PUBLIC = Visibility(frozenset({OPEN}))
ALL = Visibility(frozenset(STATES))
_BY_ROLE = {ANONYMOUS: PUBLIC, CONTRIBUTOR: PUBLIC,
            EVALUATOR: Visibility(frozenset({OPEN, SEQUESTERED})), ADMIN: ALL}


@dataclass(frozen=True)
class Principal:
    name: str  # token name, "anonymous", "single-user", or the calling AE title
    role: str

    @property
    def visibility(self) -> Visibility:
        return _BY_ROLE[self.role]

    @property
    def can_store(self) -> bool:
        return self.role in (CONTRIBUTOR, ADMIN)

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN


SINGLE_USER = Principal("single-user", ADMIN)
ANONYMOUS_PRINCIPAL = Principal("anonymous", ANONYMOUS)
PRINCIPAL = "principal"  # request key


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh bearer token (256 random bits, URL-safe)."""
    return secrets.token_urlsafe(32)


class JwtVerifier:
    """Bearer tokens that are JWTs from an identity provider (``[auth.jwt]``, OIDC): signature by
    one of the provider's keys (JWKS file or URL), issuer, audience and expiry checked by PyJWT;
    the role is the highest one named in the roles claim (none: anonymous)."""

    def __init__(self, cfg: JwtConfig, jwks_path: str | None) -> None:
        self.cfg = cfg
        self._keys = None
        if jwks_path:
            self._keys = jwt.PyJWKSet.from_json(Path(jwks_path).read_text(encoding="utf-8"))
        # A short timeout: the fetch holds a thread of the server's pool while it waits.
        self._client = (jwt.PyJWKClient(cfg.jwks_url, cache_jwk_set=True, lifespan=300, timeout=5)
                        if cfg.jwks_url else None)
        self._refreshed = -_JWKS_REFRESH
        self._refresh_lock = threading.Lock()

    def _url_key(self, kid: str | None) -> Any:
        """The provider's key ``kid`` from the cached key set; an unknown kid fetches the set
        again, but at most once per _JWKS_REFRESH seconds whatever callers send (else any
        anonymous request carrying a made-up kid would make the server fetch the set)."""
        assert self._client is not None
        keys = self._client.get_signing_keys()
        found = next((k.key for k in keys if kid is None or k.key_id == kid), None)
        if found is None:
            with self._refresh_lock:
                if time.monotonic() - self._refreshed < _JWKS_REFRESH:
                    raise jwt.PyJWKClientError(f"unknown key id {kid!r}")
                self._refreshed = time.monotonic()
            keys = self._client.get_signing_keys(refresh=True)
            found = next((k.key for k in keys if kid is None or k.key_id == kid), None)
        if found is None:
            raise jwt.PyJWKClientError(f"unknown key id {kid!r}")
        return found

    def principal(self, token: str) -> Principal | None:
        """Blocking when keys are fetched from a URL: call it in a thread."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            if self._client is not None:
                key = self._url_key(kid)
            else:
                assert self._keys is not None
                key = next(k.key for k in self._keys.keys if kid is None or k.key_id == kid)
            claims = jwt.decode(token, key, algorithms=self.cfg.algorithms, audience=self.cfg.audience,
                                issuer=self.cfg.issuer, options={"require": ["exp", "iss", "aud"]})
        except (jwt.PyJWTError, StopIteration, KeyError) as exc:
            log.warning("JWT refused: %s", type(exc).__name__)
            return None
        named = claims
        for part in self.cfg.roles_claim.split("."):
            named = named.get(part) if isinstance(named, dict) else None
        roles = ({named} if isinstance(named, str)
                 else {r for r in named if isinstance(r, str)} if isinstance(named, list) else set())
        role = next((r for r in (ADMIN, EVALUATOR, CONTRIBUTOR) if r in roles), ANONYMOUS)
        return Principal(str(claims.get("sub", "jwt")), role)


def _looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("eyJ")


class Authenticator:
    def __init__(self, tokens: list[TokenConfig], aes: list[AeRoleConfig],
                 jwt_verifier: JwtVerifier | None = None) -> None:
        self._tokens = list(tokens)
        self._aes = list(aes)
        self.jwt = jwt_verifier

    @classmethod
    def from_config(cls, cfg: Config) -> Authenticator:
        verifier = None
        if cfg.auth.jwt is not None:
            path = cfg.auth.jwt.jwks_file
            verifier = JwtVerifier(cfg.auth.jwt, str(cfg.resolve(path)) if path else None)
        return cls(cfg.auth.tokens, cfg.dimse.ae, verifier)

    @property
    def single_user(self) -> bool:
        return not self._tokens and self.jwt is None

    async def principal_async(self, authorization: str | None) -> Principal | None:
        """:meth:`principal`, with JWTs verified in a thread (a JWKS URL may be fetched)."""
        token = (authorization or "").strip().partition(" ")[2].strip()
        if self.jwt is not None and _looks_like_jwt(token) \
                and (authorization or "").strip().lower().startswith("bearer "):
            return await asyncio.to_thread(self.jwt.principal, token)
        return self.principal(authorization)

    def principal(self, authorization: str | None) -> Principal | None:
        """The caller of an HTTP request; None when a token was given and is not valid."""
        if self.single_user:
            return SINGLE_USER
        if not authorization:
            return ANONYMOUS_PRINCIPAL
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        if self.jwt is not None and _looks_like_jwt(token.strip()):
            return self.jwt.principal(token.strip())
        digest = token_hash(token.strip())
        found = None
        for entry in self._tokens:  # compare with every entry: time does not tell which matched
            if hmac.compare_digest(entry.sha256, digest):
                found = entry
        return Principal(found.name, found.role) if found else None

    def dimse_principal(self, ae_title: str, host: str) -> Principal:
        """The role of a calling AE (``[[dimse.ae]]``); unlisted callers are anonymous, and with
        neither tokens nor AE entries configured (single-user) every caller is admin."""
        if self.single_user and not self._aes:
            return SINGLE_USER
        ae = ae_title.strip()
        for entry in self._aes:
            if entry.ae_title == ae and (not entry.host or entry.host == host):
                return Principal(ae, entry.role)
        return Principal(ae or "anonymous", ANONYMOUS)


AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Attach the caller to the request; a token that is not valid is 401 (logged without it)."""
    if request.path == "/healthz" or request.method == "OPTIONS":
        request[PRINCIPAL] = ANONYMOUS_PRINCIPAL
        return await handler(request)
    principal = await request.app[AUTHENTICATOR].principal_async(request.headers.get("Authorization"))
    if principal is None:
        log.warning("authentication failed: %s %s from %s (token not valid)", request.method,
                    request.path, request.remote)
        raise web.HTTPUnauthorized(text="the bearer token is not valid",
                                   headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    request[PRINCIPAL] = principal
    return await handler(request)


def principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


def visibility(request: web.Request) -> Visibility:
    return request[PRINCIPAL].visibility


def require_store(request: web.Request) -> Principal:
    """401 without a token, 403 with one whose role may not store."""
    return _require(request, lambda p: p.can_store, "storing needs a contributor or admin token")


def require_admin(request: web.Request) -> Principal:
    return _require(request, lambda p: p.is_admin, "this operation needs an admin token")


def _require(request: web.Request, allowed: Callable[[Principal], bool], what: str) -> Principal:
    p = principal(request)
    if allowed(p):
        return p
    if p.role == ANONYMOUS:
        raise web.HTTPUnauthorized(text=what, headers={"WWW-Authenticate": "Bearer"})
    log.warning("forbidden: %s %s by %s (role %s)", request.method, request.path, p.name, p.role)
    raise web.HTTPForbidden(text=what)
