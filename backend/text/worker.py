"""Text encoders in a child process, for host applications such as desktop QGIS.

Loading a Hugging Face or open_clip text encoder imports transformers, and transformers
imports torch's compiler stack (``torch._dynamo``, which imports ``triton`` and its own
LLVM). Training and inference never compile anything, but in a desktop QGIS that has loaded
Mesa's LLVM for OpenGL the second LLVM crashes the whole application. So a host runs its
text encoders in a child instead: :class:`rsvl.backend.text.encoders.WorkerTextEncoder` has the
interface of :class:`rsvl.backend.text.encoders.TextEncoder` and asks one long-lived child Python
process (``python -m rsvl.backend.text.server``, started and spoken to by this module) for
embeddings. The host process never imports
transformers, open_clip, ``torch._dynamo`` or ``triton``, whatever their versions do at
import time; the child imports what it likes.

Protocol: one JSON object per line on the child's stdin and stdout.
``{"op": "load", "encoder": ID}`` → ``{"ok": true, "dim": D}``;
``{"op": "encode", "encoder": ID, "texts": [...]}`` → ``{"ok": true, "shape": [N, D],
"data": base64 of little-endian float32}``; a failure → ``{"ok": false, "error": MESSAGE,
"kind": "TextEncoderError" or another exception name}``. The child's own stdout is sent
to its stderr (a log file), so nothing a library prints can corrupt the protocol. The
child ends when its stdin closes.
"""

from __future__ import annotations

import atexit
import base64
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
from typing import Optional, Sequence

from ..errors import TextEncoderError
from ..runtime.dependencies import python_executable

log = logging.getLogger("rsvl")


class TextWorker:
    """The child process; started on first use, restarted if it died, one request at a time."""

    def __init__(self):
        self._lock = threading.Lock()
        self._proc: Optional[subprocess.Popen] = None
        self._log_path: Optional[str] = None

    def _start(self) -> subprocess.Popen:
        env = dict(os.environ)
        # The child sees exactly the packages this process sees (QGIS adds its own paths).
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
                   HF_HUB_DISABLE_PROGRESS_BARS="1", TOKENIZERS_PARALLELISM="false")
        fd, self._log_path = tempfile.mkstemp(prefix="rsvl-textworker-", suffix=".log")
        with os.fdopen(fd, "wb") as stderr:
            proc = subprocess.Popen(
                [python_executable(), "-m", "rsvl.backend.text.server"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=stderr, env=env, text=True, encoding="utf-8", bufsize=1,
                cwd=tempfile.gettempdir())
        log.info("text encoders run in a separate process (pid %d)", proc.pid)
        return proc

    def _log_tail(self, lines: int = 15) -> str:
        try:
            with open(self._log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:]).strip()
        except (OSError, TypeError):
            return ""

    def request(self, message: dict) -> dict:
        with self._lock:
            for attempt in (1, 2):
                if self._proc is None or self._proc.poll() is not None:
                    self._proc = self._start()
                try:
                    self._proc.stdin.write(json.dumps(message) + "\n")
                    self._proc.stdin.flush()
                    line = self._proc.stdout.readline()
                except (BrokenPipeError, OSError):
                    line = ""
                if line:
                    break
                self._proc.wait(timeout=30)
                if attempt == 2:
                    raise TextEncoderError(
                        f"the text encoder process ended (exit status {self._proc.returncode}): "
                        f"{self._log_tail() or 'no message'}")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise TextEncoderError(reply.get("error", "the text encoder process failed"))
        return reply

    def close(self) -> None:
        with self._lock:
            if self._proc is not None:
                try:
                    self._proc.stdin.close()
                    self._proc.wait(timeout=10)
                except (OSError, subprocess.TimeoutExpired):
                    self._proc.kill()
                self._proc = None
            if self._log_path and os.path.exists(self._log_path):
                os.remove(self._log_path)
                self._log_path = None


_worker = TextWorker()
atexit.register(_worker.close)


def stop_worker() -> None:
    """End the child process (it is started again when next needed)."""
    _worker.close()


def _decode(reply: dict):
    import numpy as np
    import torch

    data = np.frombuffer(base64.b64decode(reply["data"]), dtype="<f4").reshape(reply["shape"])
    return torch.from_numpy(data.copy())


def load_in_worker(encoder_id: str) -> int:
    """Load an encoder in the child; its embedding size."""
    return int(_worker.request({"op": "load", "encoder": encoder_id})["dim"])


def encode_in_worker(encoder_id: str, texts: Sequence[str]):
    """(len(texts), dim) float32 tensor of L2-normalised embeddings, computed in the child."""
    return _decode(_worker.request({"op": "encode", "encoder": encoder_id, "texts": list(texts)}))
