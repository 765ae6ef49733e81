"""What the Serve endpoint tests share: a free loopback port and the `POST /generate` call."""

from __future__ import annotations

import socket

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> requests.Response:
    return requests.post(f"{url}/generate", json=body, timeout=120)
