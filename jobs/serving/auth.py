"""API keys and per-key rate limits at the gateway, and the request-body bound (pure, tested without Serve).

Keys come from a file, one per line (`#` comments and blank lines ignored), either the key itself or
`sha256:<hex>` of it, so a Kubernetes Secret mounted as a file works unchanged and the file need not hold
plain keys. Clients send `Authorization: Bearer <key>` or `X-API-Key: <key>`. No file: no auth (the local
default; `phenaki serve` warns when it listens beyond loopback without keys). TLS is the ingress's job
(docs/serving.md).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import threading
import time
from pathlib import Path


class ApiKeys:
    def __init__(self, digests: set[str]):
        self.digests = digests

    @classmethod
    def from_file(cls, path: str | Path | None) -> ApiKeys | None:
        """None for no file (auth off); ValueError naming the file when it holds no key."""
        if not path:
            return None
        digests = set()
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            digests.add(line[len("sha256:") :].lower() if line.startswith("sha256:") else _digest(line))
        if not digests:
            raise ValueError(f"{path} holds no API key (one per line, or sha256:<hex>)")
        return cls(digests)

    def identify(self, headers) -> str | None:
        """The digest of the request's valid key, or None (missing or unknown key)."""
        key = headers.get("x-api-key")
        auth = headers.get("authorization", "")
        if key is None and auth.lower().startswith("bearer "):
            key = auth[7:].strip()
        if not key:
            return None
        digest = _digest(key)
        # compare_digest against every key: no early exit that times which prefix matched
        found = [d for d in self.digests if hmac.compare_digest(d, digest)]
        return found[0] if found else None


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class RateLimiter:
    """A token bucket per client: `per_minute` requests a minute on average, bursts up to `per_minute`."""

    def __init__(self, per_minute: float, clock=time.monotonic):
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, per_minute)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, last time)
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """0 when the request may go, else the seconds until it could."""
        if self.rate <= 0:
            return 0.0
        with self._lock:
            now = self.clock()
            tokens, last = self._buckets.get(client, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens >= 1:
                self._buckets[client] = (tokens - 1, now)
                return 0.0
            self._buckets[client] = (tokens, now)
            return (1 - tokens) / self.rate


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a request body over `limit()` bytes is answered 413 before it is read whole
    (Content-Length checked first; a chunked body is counted as it streams)."""

    def __init__(self, app, limit):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit()
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await _too_large(send, limit)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge
            return message

        started = False

        async def watched_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched_send)
        except BodyTooLarge:
            if not started:
                await _too_large(send, limit)


async def _too_large(send, limit: int) -> None:
    body = (f'{{"detail": "request body: larger than the {limit}-byte limit (max_body_bytes)"}}').encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
