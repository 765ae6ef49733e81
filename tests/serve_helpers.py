"""What the Serve endpoint tests share: a free loopback port and the synchronous video call."""

from __future__ import annotations

import requests

from jobs.runtime import free_port

__all__ = ["free_port", "post"]


def post(url: str, body: dict, headers: dict | None = None, **params) -> requests.Response:
    """`POST /v1/videos/sync`: the video itself (or the error) for one request."""
    return requests.post(f"{url}/v1/videos/sync", json=body, headers=headers, params=params, timeout=120)
