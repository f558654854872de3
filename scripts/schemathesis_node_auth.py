"""Schemathesis hook: signs the calls to the node-to-node routes as an agent does.

Loaded by scripts/schemathesis.sh (SCHEMATHESIS_HOOKS=scripts.schemathesis_node_auth) for
the run over /v1/internal and /v1/blobs. The agent there runs without a cluster key
(--insecure-no-encryption), so its MAC key derives from the cluster id
(STRATUS_CLUSTER_ID): HKDF-SHA256(salt "stratus cluster key", "insecure-<id>", info
"stratus node api mac v1"), key id "insecure". The format is api/src/node_auth.rs's.

The signature is made on the prepared request, the bytes that go on the wire (method, the
URL's host:port, its percent-encoded path and query, the body's SHA-256), by wrapping
requests.Session.send: schemathesis's own hooks run before the body is serialized.
"""

import hashlib
import hmac
import os
import secrets
import time
from urllib.parse import urlsplit

import requests

SALT = b"stratus cluster key"
INFO = b"stratus node api mac v1"
DOMAIN = "stratus node mac v1"
NODE_PREFIXES = ("/v1/internal/", "/v1/blobs/")


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
        counter += 1
    return okm[:length]


def sign(key_id: str, secret: bytes, method: str, authority: str, path: str, query: str,
         content_sha256: str, ts: int, nonce: str) -> str:
    text = "\n".join([DOMAIN, key_id, method, authority, path, query, content_sha256, str(ts), nonce])
    mac = hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()
    return f"Stratus-Node-MAC v1 key={key_id},ts={ts},nonce={nonce},mac={mac}"


KEY_ID = "insecure"
SECRET = hkdf_sha256(f"insecure-{os.environ.get('STRATUS_CLUSTER_ID', 'stratus')}".encode(), SALT, INFO)

_send = requests.Session.send


def _signed_send(self, request, **kwargs):
    url = urlsplit(request.url)
    if url.path.startswith(NODE_PREFIXES):
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        if request.method == "PUT" and url.path.startswith("/v1/blobs/"):
            # A blob upload signs the digest its path names, as Client::put_blob does.
            digest = url.path.rsplit("/", 1)[-1]
        else:
            digest = hashlib.sha256(body).hexdigest()
        request.headers["Authorization"] = sign(
            KEY_ID, SECRET, request.method, url.netloc, url.path, url.query, digest,
            int(time.time()), secrets.token_hex(16),
        )
        request.headers["x-stratus-content-sha256"] = digest
    return _send(self, request, **kwargs)


requests.Session.send = _signed_send
