"""Verify the identity JWT that wxgate forwards upstream (PyJWT with PyJWKClient).

    pip install 'PyJWT[crypto]'
    python verify.py JWKS_URL ISSUER AUDIENCE TOKEN

Prints the verified claims as JSON; exits 1 when the token is refused.
"""
import json
import sys

import jwt


def verify(jwks: jwt.PyJWKClient, issuer: str, audience: str, token: str) -> dict:
    # The token's `kid` picks the key; the algorithm is pinned here, never taken from the token.
    key = jwks.get_signing_key_from_jwt(token).key
    return jwt.decode(
        token,
        key,
        algorithms=["ES256"],
        issuer=issuer,
        audience=audience,
        options={"require": ["iss", "aud", "exp", "sub"]},
        leeway=30,
    )


def main() -> int:
    if len(sys.argv) != 5:
        print("usage: verify.py JWKS_URL ISSUER AUDIENCE TOKEN", file=sys.stderr)
        return 2
    jwks_url, issuer, audience, token = sys.argv[1:]
    # In an app, build the client once: it caches the keys and refetches on an unknown kid.
    jwks = jwt.PyJWKClient(jwks_url)
    try:
        claims = verify(jwks, issuer, audience, token)
    except jwt.PyJWTError as error:
        print(f"rejected: {error}", file=sys.stderr)
        return 1
    print(json.dumps(claims))
    return 0


if __name__ == "__main__":
    sys.exit(main())
