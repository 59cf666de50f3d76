"""Development tokens (devtools.tokens) and the identity part of Envoy's config."""

import json

import jwt
import pytest

from blueprint.edge.auth import JWKS_CLUSTER
from blueprint.edge.render import envoy_config, render
from blueprint.edge.settings import EdgeAuth, EnvoySite
from devtools import tokens
from tests.support.compose_check import validate_envoy


def test_keys_are_made_once_and_tokens_verify_against_the_jwks(tmp_path):
    key = tokens.ensure_keys(tmp_path)
    assert (tmp_path / tokens.PRIVATE_KEY).stat().st_mode & 0o777 == 0o600
    again = tokens.ensure_keys(tmp_path)
    assert again.kid == key.kid  # reused, not replaced
    [jwk] = json.loads((tmp_path / tokens.JWKS).read_text())["keys"]
    assert (jwk["kty"], jwk["crv"], jwk["kid"], jwk["alg"]) == ("EC", "P-256", key.kid, "ES256")
    assert "d" not in jwk  # the public half only

    token = again.mint(scopes=["orders:write"], subject="alice", ttl_seconds=60)
    public = jwt.PyJWK(jwk).key
    claims = jwt.decode(
        token, public, algorithms=["ES256"], audience=tokens.DEV_AUDIENCE, issuer=tokens.DEV_ISSUER
    )
    assert claims["sub"] == "alice"
    assert claims["scope"] == "orders:write"
    assert claims["exp"] - claims["iat"] == 60
    assert jwt.get_unverified_header(token)["kid"] == key.kid


def test_make_token_defaults_to_every_scope_and_narrows(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SCOPES", raising=False)
    assert tokens.main(["--keys", str(tmp_path)]) == 0
    every = jwt.decode(capsys.readouterr().out.strip(), options={"verify_signature": False})
    assert every["scope"] == "inventory:admin orders:write reports:read"
    monkeypatch.setenv("SCOPES", "orders:write,reports:read")
    assert tokens.main(["--keys", str(tmp_path)]) == 0
    narrow = jwt.decode(capsys.readouterr().out.strip(), options={"verify_signature": False})
    assert narrow["scope"] == "orders:write reports:read"
    assert tokens.main(["--keys", str(tmp_path), "--scopes", "admin:everything"]) == 2


def test_oidc_settings_come_from_the_environment():
    auth = EdgeAuth.from_env(
        {
            "AUTH_ISSUER": "https://id.example.com/realms/shop",
            "AUTH_AUDIENCES": "shop-api, shop-admin",
            "AUTH_JWKS_URI": "https://id.example.com/realms/shop/certs",
        }
    )
    assert auth.issuer == "https://id.example.com/realms/shop"
    assert auth.audiences == ("shop-api", "shop-admin")
    with pytest.raises(ValueError, match="AUTH_JWKS_URI"):
        EdgeAuth.from_env({"AUTH_JWKS_URI": "file:///etc/passwd"})


def test_a_remote_jwks_gets_its_own_verified_tls_cluster_and_envoy_accepts_it():
    site = EnvoySite(auth=EdgeAuth(jwks_uri="https://id.example.com/realms/shop/certs"))
    config = envoy_config(site)
    [cluster] = [c for c in config["static_resources"]["clusters"] if c["name"] == JWKS_CLUSTER]
    tls = cluster["transport_socket"]["typed_config"]
    assert tls["sni"] == "id.example.com"
    assert cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
        "socket_address"
    ] == {"address": "id.example.com", "port_value": 443}
    assert validate_envoy(render(site)) == []


def test_the_dev_config_has_no_remote_jwks_cluster():
    names = [c["name"] for c in envoy_config(EnvoySite())["static_resources"]["clusters"]]
    assert JWKS_CLUSTER not in names
