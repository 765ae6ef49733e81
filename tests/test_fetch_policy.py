"""pipelines.fetch's policy without a network: local paths under the named roots (refused before any open),
address classes, resolution, backoff, schemes and the policy's own validation."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from test_fetch import BODY, reason_of

from pipelines.fetch import (
    FetchError,
    FetchPolicy,
    backoff_delays,
    check_scheme,
    fetch_bytes,
    fetch_range,
    fetch_size,
    is_blocked_address,
    resolve_and_check,
)


# -------------------------------------------------------------------------------------------- local
def test_local_paths(tmp_path: Path) -> None:
    p = tmp_path / "clip.mp4"
    p.write_bytes(BODY)
    here = FetchPolicy(local_roots=(str(tmp_path),))
    assert fetch_bytes(str(p), here) == BODY
    assert fetch_bytes(f"file://{p}", here) == BODY
    assert fetch_bytes(f"local://{p}", here) == BODY
    assert fetch_range(str(p), here, 2, 6) == BODY[2:6] and fetch_size(str(p), here) == len(BODY)
    assert reason_of(str(tmp_path / "missing.mp4"), here).reason == "missing"
    assert reason_of(f"file://{tmp_path}/missing.mp4", here).reason == "missing"
    assert reason_of(str(p), FetchPolicy(max_bytes=16, local_roots=(str(tmp_path),))).reason == "too_large"
    assert reason_of(str(tmp_path), here).reason == "blocked"  # a directory
    assert reason_of("/dev/zero", FetchPolicy(local_roots=("/",))).reason == "blocked"  # endless reads
    assert reason_of(str(p), FetchPolicy(allowed_schemes=("https",))).reason == "blocked"
    os.mkfifo(tmp_path / "fifo")  # opening a FIFO for reading would wait for a writer
    assert reason_of(str(tmp_path / "fifo"), here).reason == "blocked"


def test_local_paths_outside_roots_refused_before_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a hostile listing names outside the allowed folders is refused without the file being opened."""
    root, outside = tmp_path / "listing", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.mp4").write_bytes(BODY)
    (root / "link.mp4").symlink_to(outside / "secret.mp4")
    (root / "inside.mp4").write_bytes(BODY)
    (root / "alias.mp4").symlink_to(root / "inside.mp4")  # a symlink that stays inside is fine
    opened: list[str] = []
    real_open = os.open
    monkeypatch.setattr(
        os, "open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k)
    )
    policy = FetchPolicy(local_roots=(str(root),))
    cases = {
        "file:///etc/passwd": "outside the allowed folders",
        "/etc/passwd": "outside the allowed folders",
        f"{root}/../../../etc/passwd": "'..'",
        "/proc/self/environ": "pseudo-file",
        str(root / "link.mp4"): "through a symlink",
        "relative/clip.mp4": "relative local path",
    }
    for url, why in cases.items():
        err = reason_of(url, policy)
        assert err.reason == "blocked" and why in err.detail, (url, err.detail)
    # kernel pseudo-files stay refused even when the user allows everything
    assert "pseudo-file" in reason_of("/proc/self/environ", FetchPolicy(local_roots=("/",))).detail
    assert opened == []
    assert fetch_bytes(str(root / "alias.mp4"), policy) == BODY
    assert opened == [str(root / "inside.mp4")]  # the resolved path, not the link


def test_local_roots_validated() -> None:
    for bad in (["relative/dir"], "/data", [""], [3]):
        with pytest.raises(ValueError, match="local_roots"):
            FetchPolicy(local_roots=bad)  # type: ignore[arg-type]
    policy = FetchPolicy(local_roots=["/data"]).with_roots(["/media", "/data"])  # type: ignore[arg-type]
    assert policy.local_roots == ("/data", "/media") and hash(policy)


# -------------------------------------------------------------------------------------- pure helpers
@pytest.mark.parametrize(
    ("ip", "blocked"),
    [
        ("8.8.8.8", False),
        ("93.184.216.34", False),
        ("2001:4860:4860::8888", False),
        ("::ffff:8.8.8.8", False),  # IPv4-mapped public address
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),  # cloud metadata
        ("100.64.0.1", True),  # carrier-grade NAT
        ("0.0.0.0", True),  # reaches the local host on Linux
        ("224.0.0.1", True),  # multicast counts as "global" in ipaddress
        ("240.0.0.1", True),
        ("255.255.255.255", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::", True),
        ("fe80::1", True),
        ("fe80::1%eth0", True),
        ("fc00::1", True),
        ("fd00:ec2::254", True),  # AWS IPv6 metadata
        ("ff02::1", True),
        ("::ffff:127.0.0.1", True),
        ("::ffff:169.254.169.254", True),
        ("2002:a9fe:a9fe::", True),  # 6to4 wrapping 169.254.169.254
        ("64:ff9b::a9fe:a9fe", True),  # NAT64 wrapping 169.254.169.254
        ("64:ff9b::808:808", False),  # NAT64 wrapping 8.8.8.8
    ],
)
def test_is_blocked_address(ip: str, blocked: bool) -> None:
    assert is_blocked_address(ip, FetchPolicy()) is blocked
    assert is_blocked_address(ip, FetchPolicy(allow_private=True)) is False


def test_allow_loopback_only_opens_loopback() -> None:
    policy = FetchPolicy(allow_loopback=True)
    assert not is_blocked_address("127.0.0.1", policy)
    assert not is_blocked_address("::1", policy)
    assert not is_blocked_address("::ffff:127.0.0.1", policy)
    for ip in ("10.0.0.1", "169.254.169.254", "0.0.0.0", "fe80::1"):
        assert is_blocked_address(ip, policy), ip


def _fake_resolver(*addrs: str):
    def resolve(host: str, port: int, *args: object) -> list[tuple]:
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in addrs
        ]

    return resolve


def test_resolve_and_check() -> None:
    policy = FetchPolicy()
    assert resolve_and_check("cdn.example", 443, policy, _fake_resolver("8.8.8.8", "8.8.4.4", "8.8.8.8")) == [
        "8.8.8.8",
        "8.8.4.4",
    ]
    with pytest.raises(FetchError) as e:  # one private answer poisons the whole set (DNS rebinding)
        resolve_and_check("evil.example", 80, policy, _fake_resolver("8.8.8.8", "169.254.169.254"))
    assert e.value.reason == "blocked" and "169.254.169.254" in e.value.detail
    with pytest.raises(FetchError) as e:
        resolve_and_check("evil.example", 80, policy, _fake_resolver("2001:4860::1", "::1"))
    assert e.value.reason == "blocked"
    loop_ok = FetchPolicy(allow_loopback=True)
    assert resolve_and_check("localhost", 80, loop_ok, _fake_resolver("127.0.0.1", "::1")) == [
        "127.0.0.1",
        "::1",
    ]


def test_backoff_delays() -> None:
    assert backoff_delays(FetchPolicy(retries=0)) == []
    assert backoff_delays(FetchPolicy(retries=3, backoff_s=0.5)) == [0.5, 1.0, 2.0]
    assert backoff_delays(FetchPolicy(retries=6, backoff_s=1.0, max_backoff_s=8.0)) == [1, 2, 4, 8, 8, 8]


def test_check_scheme() -> None:
    policy = FetchPolicy()
    assert check_scheme("/data/x.mp4", policy) == "file"
    assert check_scheme("relative/x.mp4", policy) == "file"
    assert check_scheme("GS://b/x", policy) == "gs"
    assert check_scheme("https://example.com/x", policy) == "https"
    with pytest.raises(FetchError) as e:
        check_scheme("s3://b/x", policy)
    assert e.value.reason == "blocked" and "allowed_schemes" in str(e.value)


def test_policy_validation() -> None:
    for bad in (
        {"timeout_s": 0},
        {"retries": -1},
        {"max_bytes": 0},
        {"backoff_s": -1},
        {"allowed_schemes": "https"},
    ):
        with pytest.raises(ValueError):
            FetchPolicy(**bad)
    assert FetchPolicy(allowed_schemes=["https"]).allowed_schemes == ("https",)  # type: ignore[arg-type]
    assert hash(FetchPolicy(allowed_schemes=["https"]))  # type: ignore[arg-type]
