#!/usr/bin/env python3
"""A webhook receiver that verifies atender-webhooks deliveries, standard library only.

    WEBHOOK_SECRET=whsec_... PORT=8000 python3 verify.py

It answers 204 to a genuine delivery and 401 to anything else, and prints one line per request.
By default it checks the Standard Webhooks headers (webhook-id, webhook-timestamp,
webhook-signature), which also protect against replays; SCHEME=atender checks
X-Atender-Signature instead. PORT=0 picks a free port; the first line printed names it.
"""

import base64
import hashlib
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer


def verify_atender_signature(secret: str, body: bytes, signature: str) -> bool:
    """X-Atender-Signature: lowercase hex HMAC-SHA256 of the raw body, keyed by the whole
    secret string (whsec_ prefix included)."""
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), signature.strip().encode("latin-1"))


# Deliveries signed longer ago (or further ahead) than this are refused as possible replays.
TOLERANCE_SECONDS = 5 * 60


def verify_standard_webhooks(secret: str, headers, body: bytes, now=None) -> bool:
    """Standard Webhooks: base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}",
    keyed by the base64-decoded part of the secret after whsec_. The header may carry several
    space-separated signatures (during a secret rotation); one match is enough."""
    msg_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not (msg_id and timestamp and signatures):
        return False
    if not (timestamp.isascii() and timestamp.isdigit()):
        return False
    now = time.time() if now is None else now
    if abs(now - int(timestamp)) > TOLERANCE_SECONDS:
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
    for signature in signatures.split():
        version, _, value = signature.partition(",")
        if version == "v1" and hmac.compare_digest(expected, value.encode("latin-1")):
            return True
    return False


class Receiver(BaseHTTPRequestHandler):
    secret = ""
    scheme = "standard"
    seen = set()

    def do_POST(self):
        # Verify the raw bytes exactly as received, never re-serialized JSON.
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.scheme == "atender":
            genuine = verify_atender_signature(
                self.secret, body, self.headers.get("X-Atender-Signature", "")
            )
        else:
            genuine = verify_standard_webhooks(self.secret, self.headers, body)
        if not genuine:
            print("rejected: bad signature", flush=True)
            self.send_response(401)
            self.end_headers()
            return
        event = json.loads(body)
        # A delivery may arrive more than once (at-least-once): deduplicate on a signed value.
        # Each event reaches a subscription as one delivery, so the event id in the body will do.
        if event["id"] in self.seen:
            print(f"duplicate {event['id']}", flush=True)
        else:
            self.seen.add(event["id"])
            # Acknowledge at once; real work belongs in a background job.
            print(f"verified {event['id']} {event['event']}", flush=True)
        self.send_response(204)
        self.end_headers()

    def log_message(self, format, *args):
        pass


def main():
    secret = os.environ.get("WEBHOOK_SECRET", "")
    if not secret.startswith("whsec_"):
        sys.exit("set WEBHOOK_SECRET to the subscription secret (whsec_...)")
    Receiver.secret = secret
    Receiver.scheme = os.environ.get("SCHEME", "standard")
    host = os.environ.get("HOST", "127.0.0.1")
    server = HTTPServer((host, int(os.environ.get("PORT", "8000"))), Receiver)
    print(f"listening on http://{host}:{server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
