"""The optional JWT / OIDC mode of access control (issue 7): tokens signed by an identity
provider's key (JWKS) carry the caller's role in a claim; issuer, audience, expiry and signature
are checked, and a token that fails any of them is 401."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from archive.app import create_app
from archive.config import ConfigError, from_dict
from tests import synth
from tests.conftest import make_config, multipart

ISSUER, AUDIENCE = "https://idp.example/realms/commons", "imaging-archive"


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def signer(tmp_path: Path) -> tuple[Any, Path]:
    key = _key()
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="k1", use="sig", alg="RS256")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk]}))
    return key, jwks


def _token(key: Any, kid: str = "k1", **claims: Any) -> str:
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": int(time.time()) + 300, **claims}
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": kid})


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_roles_from_a_signed_token(aiohttp_client, tmp_path: Path, signer: tuple[Any, Path]) -> None:
    key, jwks = signer
    cfg = make_config(tmp_path, auth={"jwt": {"issuer": ISSUER, "audience": AUDIENCE,
                                              "jwks_file": str(jwks), "roles_claim": "realm_access.roles"}})
    client = await aiohttp_client(create_app(cfg))
    contributor = _token(key, realm_access={"roles": ["offline_access", "contributor"]})
    admin = _token(key, realm_access={"roles": ["admin"]})
    evaluator = _token(key, realm_access={"roles": "evaluator"})
    body, ctype = multipart([synth.instance(patient_id="JWT-SEQ")])
    assert (await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})).status == 401
    resp = await client.post("/dicom-web/studies", data=body,
                             headers={"Content-Type": ctype, **_auth(contributor)})
    assert resp.status == 200, await resp.text()
    resp = await client.post("/api/release", json={"patient_id": "JWT-SEQ", "state": "sequestered"},
                             headers=_auth(admin))
    assert resp.status == 200, await resp.text()

    async def studies(headers: dict[str, str]) -> int:
        resp = await client.get("/dicom-web/studies", headers=headers)
        assert resp.status == 200, await resp.text()
        return len(await resp.json())

    assert await studies({}) == 0  # anonymous: the patient is sequestered
    assert await studies(_auth(contributor)) == 0
    assert await studies(_auth(evaluator)) == 1
    assert await studies(_auth(_token(key))) == 0  # valid, no role: anonymous
    forged = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "exp": 2**40, "realm_access": {"roles": ["admin"]}},
                        "a-shared-secret-that-is-long-enough-for-hs256", algorithm="HS256")
    for bad in (_token(key, exp=int(time.time()) - 10), _token(key, aud="someone-else"),
                _token(key, iss="https://evil.example"), _token(_key(), realm_access={"roles": ["admin"]}),
                _token(key, kid="unknown"), forged):
        resp = await client.get("/dicom-web/studies", headers=_auth(bad))
        assert resp.status == 401, bad


async def test_keys_from_the_providers_jwks_url(aiohttp_client, aiohttp_server, tmp_path: Path,
                                               signer: tuple[Any, Path]) -> None:
    key, jwks = signer
    async def certs(_: web.Request) -> web.Response:
        return web.Response(body=jwks.read_bytes(), content_type="application/json")

    provider = web.Application()
    provider.router.add_get("/certs", certs)
    idp = await aiohttp_server(provider)
    cfg = make_config(tmp_path, auth={"jwt": {"issuer": ISSUER, "audience": AUDIENCE,
                                              "jwks_url": str(idp.make_url("/certs"))}})
    client = await aiohttp_client(create_app(cfg))
    good = await client.get("/dicom-web/studies", headers=_auth(_token(key, roles=["evaluator"])))
    assert good.status == 200
    bad = await client.get("/dicom-web/studies", headers=_auth(_token(_key(), roles=["evaluator"])))
    assert bad.status == 401


def test_jwt_config_is_checked(tmp_path: Path, signer: tuple[Any, Path]) -> None:
    _, jwks = signer
    good = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_file": str(jwks)}
    assert from_dict({"auth": {"jwt": good}}).auth.jwt is not None
    empty = tmp_path / "empty.json"
    empty.write_text('{"keys": []}')
    for bad in ({**good, "issuer": ""}, {**good, "jwks_url": "https://idp/jwks"},
                {"issuer": ISSUER, "audience": AUDIENCE}, {**good, "algorithms": ["HS256"]},
                {**good, "jwks_file": str(tmp_path / "missing.json")}, {**good, "jwks_file": str(empty)}):
        with pytest.raises(ConfigError):
            from_dict({"auth": {"jwt": bad}})
