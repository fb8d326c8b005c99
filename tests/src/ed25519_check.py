"""An independent check of Relay's v1a signatures, with PyPI `cryptography`.

Reads one JSON request on stdin:
  {"jwks": {...}, "public_keys": ["whpk_..."], "signing_keys": ["whsk_..."],
   "messages": [{"id": ..., "timestamp": ..., "body_b64": ..., "signature": ...}]}
and prints one JSON answer:
  {"kids": [...], "thumbprints": [...], "public_keys": [...],
   "verified": [[kid, ...] per message], "signed": [[signature per signing key] per message]}

Everything here follows the Standard Webhooks specification (signed content
`{id}.{timestamp}.{body}`, `v1a,` + base64 ed25519 signature, `whsk_`/`whpk_` = base64 of the
32-byte seed/public key) and RFC 7517/8037/7638 (JWKS, OKP keys, thumbprints), not Relay's code.
"""

import base64
import hashlib
import json
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def b64url(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def thumbprint(jwk):
    members = {"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def raw_public(key):
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


request = json.load(sys.stdin)
keys = {}
thumbprints = []
for jwk in request["jwks"]["keys"]:
    assert jwk["kty"] == "OKP" and jwk["crv"] == "Ed25519", jwk
    keys[jwk["kid"]] = Ed25519PublicKey.from_public_bytes(b64url(jwk["x"]))
    thumbprints.append(thumbprint(jwk))

# whpk_ keys, mapped to the kid of the JWKS entry with the same bytes (None when absent).
public_keys = []
for whpk in request.get("public_keys", []):
    assert whpk.startswith("whpk_"), whpk
    raw = base64.b64decode(whpk[len("whpk_"):])
    public_keys.append(next((k for k, v in keys.items() if raw_public(v) == raw), None))

signers = []
for whsk in request.get("signing_keys", []):
    assert whsk.startswith("whsk_"), whsk
    signers.append(Ed25519PrivateKey.from_private_bytes(base64.b64decode(whsk[len("whsk_"):])))

verified = []
signed = []
for message in request["messages"]:
    content = (
        f"{message['id']}.{message['timestamp']}.".encode()
        + base64.b64decode(message["body_b64"])
    )
    kids = []
    for signature in message["signature"].split(" "):
        version, _, encoded = signature.partition(",")
        if version != "v1a":
            continue
        raw = base64.b64decode(encoded)
        for kid, key in keys.items():
            try:
                key.verify(raw, content)
                kids.append(kid)
            except InvalidSignature:
                pass
    verified.append(kids)
    signed.append(
        ["v1a," + base64.b64encode(s.sign(content)).decode() for s in signers]
    )

json.dump(
    {
        "kids": list(keys),
        "thumbprints": thumbprints,
        "public_keys": public_keys,
        "verified": verified,
        "signed": signed,
    },
    sys.stdout,
)
