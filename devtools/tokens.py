"""Development signing keys and bearer tokens (JWT, ES256) for Envoy's jwt_authn.

``make up`` keeps an EC P-256 key pair under ``.run/auth/`` (created once, never
committed) and a JWKS file with its public half, which Envoy reads
(``local_jwks``). ``make token`` prints a token signed with it::

    python -m devtools.tokens                              # all scopes, 12 h
    python -m devtools.tokens --scopes orders:write --subject alice --ttl 600
    python -m devtools.tokens --keys-only                  # `make keys` (compose)

The test sandbox makes its own key pair the same way and mints tokens with
chosen scopes, expiry, issuer and audience (``SigningKey.mint``). In production
an OIDC provider issues the tokens and Envoy fetches its JWKS (``AUTH_JWKS_URI``,
see ``blueprint.edge.settings.EdgeAuth``); nothing here is used then.
"""

import argparse
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from blueprint.access import DEV_AUDIENCE, DEV_ISSUER, DEV_JWKS_FILE, all_scopes

DEV_SUBJECT = "dev-user"
DEV_TTL_SECONDS = 12 * 3600
ALGORITHM = "ES256"
# The key pair's directory: Envoy reads the JWKS file the edge's settings name.
DEV_KEYS_DIR, JWKS = DEV_JWKS_FILE.parent, DEV_JWKS_FILE.name
PRIVATE_KEY = "signing-key.pem"


@dataclass(frozen=True)
class SigningKey:
    """A private key and the ``kid`` its public JWK is published under."""

    private_key: ec.EllipticCurvePrivateKey
    kid: str

    def jwks(self) -> dict[str, Any]:
        public = json.loads(ECAlgorithm.to_jwk(self.private_key.public_key()))
        return {"keys": [{**public, "kid": self.kid, "use": "sig", "alg": ALGORITHM}]}

    def mint(
        self,
        *,
        scopes: list[str] | None = None,
        subject: str = DEV_SUBJECT,
        issuer: str = DEV_ISSUER,
        audience: str = DEV_AUDIENCE,
        ttl_seconds: float = DEV_TTL_SECONDS,
        now: float | None = None,
    ) -> str:
        """A signed token; ``scopes`` None means every scope the mesh knows.

        A negative ``ttl_seconds`` gives an already expired token (tests).
        """
        issued = int(now if now is not None else time.time())
        claims = {
            "iss": issuer,
            "sub": subject,
            "aud": audience,
            "iat": issued,
            "nbf": issued,
            "exp": issued + int(ttl_seconds),
            "jti": uuid.uuid4().hex,
            # The standard, space-separated scope claim (RFC 8693 §4.2).
            "scope": " ".join(all_scopes() if scopes is None else scopes),
        }
        return jwt.encode(claims, self.private_key, algorithm=ALGORITHM, headers={"kid": self.kid})


def new_key() -> SigningKey:
    private_key = ec.generate_private_key(ec.SECP256R1())
    return SigningKey(private_key, _thumbprint_kid(private_key))


def _thumbprint_kid(private_key: ec.EllipticCurvePrivateKey) -> str:
    """The RFC 7638 thumbprint of the public key, so a new key gets a new kid."""
    jwk = json.loads(ECAlgorithm.to_jwk(private_key.public_key()))
    canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"))
    digest = hashes.Hash(hashes.SHA256())
    digest.update(canonical.encode())
    return jwt.utils.base64url_encode(digest.finalize()).decode()


def ensure_keys(directory: Path = DEV_KEYS_DIR) -> SigningKey:
    """The key pair in ``directory``, created (private key 0600) when absent.

    The JWKS file is rewritten from the private key every time, so both always
    belong together.
    """
    directory.mkdir(parents=True, exist_ok=True)
    pem_path = directory / PRIVATE_KEY
    if pem_path.exists():
        private_key = serialization.load_pem_private_key(pem_path.read_bytes(), password=None)
        if not isinstance(private_key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{pem_path} is not an EC private key")
        key = SigningKey(private_key, _thumbprint_kid(private_key))
    else:
        key = new_key()
        pem = key.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        descriptor = os.open(pem_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(pem)
    write_jwks(key, directory / JWKS)
    return key


def write_jwks(key: SigningKey, path: Path) -> None:
    # Write then rename: Envoy must never read a half-written key set.
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(key.jwks(), indent=2) + "\n")
    partial.replace(path)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.tokens", description=__doc__)
    parser.add_argument(
        "--scopes",
        default=os.environ.get("SCOPES", ""),
        help=f"space- or comma-separated scopes (default: all: {' '.join(all_scopes())})",
    )
    parser.add_argument("--subject", default=os.environ.get("SUBJECT", DEV_SUBJECT))
    parser.add_argument("--ttl", type=int, default=DEV_TTL_SECONDS, help="seconds (default 12 h)")
    parser.add_argument("--keys", type=Path, default=DEV_KEYS_DIR, help="key directory")
    parser.add_argument(
        "--keys-only", action="store_true", help="only create the key pair and JWKS if absent"
    )
    args = parser.parse_args(argv)
    if args.keys_only:
        ensure_keys(args.keys)
        print(f"signing key and JWKS in {args.keys}", file=sys.stderr)
        return 0
    scopes = args.scopes.replace(",", " ").split() or None
    unknown = set(scopes or ()) - set(all_scopes())
    if unknown:
        print(f"unknown scope(s): {' '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    print(ensure_keys(args.keys).mint(scopes=scopes, subject=args.subject, ttl_seconds=args.ttl))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
