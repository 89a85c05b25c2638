"""A webhook receiver on loopback, in a thread: a real HTTP server that verifies signatures the way
the README tells receivers to, and can be told to fail or to stall."""

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    webhook_id: str
    timestamp: int
    signature_ok: bool
    body: dict[str, Any]
    started: float
    finished: float = 0.0


@dataclass
class Receiver:
    url: str = ""
    secret: str | None = None  # set once the recipient exists
    fail_first: int = 0  # answer 500 to the first N attempts of each message
    status: int = 200  # what the others get
    delay: float = 0.0  # seconds before answering
    trickle: float = 0.0  # seconds between the bytes of the answer (a receiver that stalls)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _attempts: dict[str, int] = field(default_factory=dict)

    def verify(self, webhook_id: str, timestamp: str, body: bytes, header: str) -> bool:
        """Standard Webhooks, written out: HMAC-SHA256 over "id.timestamp.body", base64."""
        assert self.secret is not None
        assert self.secret.startswith("whsec_")
        key = base64.b64decode(self.secret.removeprefix("whsec_"))
        signed = f"{webhook_id}.{timestamp}.".encode() + body
        expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        return any(
            version == "v1" and hmac.compare_digest(signature, expected)
            for version, _, signature in (part.partition(",") for part in header.split())
        )

    @property
    def delivered_ids(self) -> list[str]:
        """The ids of the messages this receiver processed (answered 2xx), in order; a
        duplicate appears twice."""
        with self.lock:
            return [r.webhook_id for r in self.received if r.finished and r.signature_ok]

    def answer(self, webhook_id: str) -> int:
        with self.lock:
            self._attempts[webhook_id] = self._attempts.get(webhook_id, 0) + 1
            return 500 if self._attempts[webhook_id] <= self.fail_first else self.status


@contextmanager
def receiving(**options: Any) -> Iterator[Receiver]:
    receiver = Receiver(**options)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            webhook_id = self.headers["webhook-id"]
            timestamp = self.headers["webhook-timestamp"]
            record = Received(
                webhook_id=webhook_id,
                timestamp=int(timestamp),
                signature_ok=receiver.verify(
                    webhook_id, timestamp, body, self.headers["webhook-signature"]
                ),
                body=json.loads(body),
                started=time.monotonic(),
            )
            with receiver.lock:
                receiver.received.append(record)
            status = receiver.answer(webhook_id) if record.signature_ok else 401
            time.sleep(receiver.delay)
            if 200 <= status < 300:  # processed, whether or not the sender hears the answer
                record.finished = time.monotonic()
            try:
                if receiver.trickle:  # the status line and headers, a byte at a time
                    raw = f"HTTP/1.1 {status} OK\r\ncontent-length: 2\r\n\r\nok".encode()
                    for byte in raw:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(receiver.trickle)
                    return
                self.send_response(status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
            except OSError:  # the sender is gone (a worker killed mid-delivery)
                pass

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
