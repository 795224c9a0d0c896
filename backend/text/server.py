"""The child process of :mod:`rsvl.backend.text.worker`: ``python -m rsvl.backend.text.server``
answers load/encode requests (one JSON object per line, see that module) with the
in-process text encoders of :mod:`rsvl.backend.text.encoders` until its stdin closes."""

from __future__ import annotations

import base64
import json
import logging
import os
import sys

log = logging.getLogger("rsvl")


def serve(requests, replies) -> None:
    """Answer requests (lines of JSON) until ``requests`` ends."""
    import numpy as np

    from .encoders import get_text_encoder

    for line in requests:
        if not line.strip():
            continue
        try:
            message = json.loads(line)
            encoder = get_text_encoder(message["encoder"])
            if message["op"] == "load":
                reply = {"ok": True, "dim": encoder.dim, "id": encoder.id}
            elif message["op"] == "encode":
                emb = np.ascontiguousarray(encoder.encode(list(message["texts"])).numpy(), dtype="<f4")
                reply = {"ok": True, "shape": list(emb.shape), "data": base64.b64encode(emb.tobytes()).decode()}
            else:
                reply = {"ok": False, "error": f"unknown request {message['op']!r}", "kind": "ValueError"}
        except Exception as exc:  # every failure goes back to the host as a message
            log.exception("text encoder request failed")
            reply = {"ok": False, "error": str(exc), "kind": type(exc).__name__}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def main() -> int:
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints go to the log, not the protocol
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    serve(sys.stdin, replies)
    return 0


if __name__ == "__main__":
    sys.exit(main())
