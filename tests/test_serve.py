"""`phenaki serve` as a client meets it: real HTTP against Ray Serve on 127.0.0.1, a tiny untrained Phenaki
checkpoint (a request costs milliseconds, ~2,000 sampling steps a second), API keys and a rate limit on.

What is checked: the synchronous route and its headers; jobs with progress events, content and cancel; that
concurrent requests share sampler batches and still get exactly the video they get alone; that overload is a
fast 503 with Retry-After, a slow request a 408, a client that goes away cancels its job; keys and the rate
limit; and that bad input gets a 4xx naming the field. The request checks themselves: tests/test_serving.py.
"""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import time

import numpy as np
import pytest
import requests
from PIL import Image

from modeling.generation import write_debug_checkpoint
from pipelines.media import decode_video
from tests.serve_helpers import free_port, post

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SIZE = 64  # px: the debug model at 64 px (320 tokens a clip)
KEY = {"X-API-Key": "test-key"}
RATE = 120  # per key per minute: enough for this module with KEY; the rate test uses its own key
LIMITS = {"max_prompts": 8, "max_steps": 20_000, "max_queued": 8, "rate_per_minute": RATE}


@pytest.fixture(scope="module")
def url(ray_local, tmp_path_factory):
    from jobs.serving.app import start, stop

    tmp = tmp_path_factory.mktemp("serve")
    ckpt = write_debug_checkpoint(tmp / "transformer", image_size=SIZE, sampling={"steps": 4})
    keys = tmp / "keys.txt"
    keys.write_text("# keys of this test\ntest-key\nburst-key\n")
    base = start(
        ckpt, host="127.0.0.1", port=free_port(), num_cpus=0.5, api_keys_file=str(keys), limits=LIMITS
    )
    yield base
    stop()


def sync(url: str, body: dict, **params) -> requests.Response:
    return post(url, body, KEY, **params)


def submit(url: str, body: dict) -> dict:
    r = requests.post(f"{url}/v1/videos", json=body, headers=KEY, timeout=60)
    assert r.status_code == 202, r.text
    return r.json()


def job(url: str, job_id: str) -> dict:
    return requests.get(f"{url}/v1/videos/{job_id}", headers=KEY, timeout=30).json()


def events(url: str, job_id: str, until=None) -> list[tuple[str, dict]]:
    """The job's server-sent events, read until `done` (or until `until(view)` holds)."""
    seen = []
    with requests.get(f"{url}/v1/videos/{job_id}/events", headers=KEY, stream=True, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                seen.append((event, json.loads(line[6:])))
                if event == "done" or (until is not None and until(seen[-1][1])):
                    return seen
    return seen


# A 64 px debug clip has 320 tokens, so a segment takes at most 320 steps (one token a step, at least): 8
# segments make a job of several seconds, long enough to watch, cancel, queue behind and time out.
LONG = {"prompts": [f"a red circle, part {i}" for i in range(8)], "steps": 5000}


def test_health_page_and_models(url):
    assert requests.get(f"{url}/healthz", timeout=10).json() == {
        "status": "ok",
        "family": "phenaki",
        "busy": False,
    }
    page = requests.get(f"{url}/", timeout=10)  # the page and health need no key
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "static/app.js" in page.text and "http" not in page.text.split("<script")[0]
    [card] = requests.get(f"{url}/v1/models", headers=KEY, timeout=10).json()["data"]
    info = card["info"]
    assert (card["family"], card["tasks"], card["formats"]) == ("phenaki", [], ["mp4", "webm", "gif"])
    assert info["num_frames"] == 9 and info["fps"] == 8.0 and info["text_encoder"] == "minilm"
    assert info["defaults"]["steps"] == 4 and card["limits"]["max_prompts"] == 8


def test_sync_mp4_is_deterministic_and_the_job_keeps_its_facts(url):
    r = sync(url, {"prompts": ["a red circle moving left"], "seed": 1, "steps": 3})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "video/mp4"
    video = decode_video(r.content)
    assert video.frames.shape == (9, SIZE, SIZE, 3) and video.fps == pytest.approx(8.0)
    assert float(r.headers["X-Phenaki-Seconds"]) > 0 and json.loads(r.headers["X-Phenaki-Segments"]) == [
        [0, 9]
    ]
    record = job(url, r.headers["X-Phenaki-Job"])
    assert record["status"] == "succeeded" and record["segments"] == [
        {"prompt": "a red circle moving left", "start": 0, "end": 9}
    ]
    again = sync(url, {"prompt": "a red circle moving left", "seed": 1, "steps": 3})
    assert again.content == r.content  # seeded sampling, deterministic encoder


def test_story_gif_and_webm(url):
    story = {"prompts": ["a red circle", "a blue square"], "seed": 0, "guidance_scale": 3.0}
    r = sync(url, {**story, "format": "gif"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/gif" and r.content[:6] == b"GIF89a"
    assert r.headers["X-Phenaki-Frames"] == "13" and json.loads(r.headers["X-Phenaki-Segments"]) == [
        [0, 9],
        [9, 13],
    ]
    webm = sync(url, {**story, "format": "webm"})
    assert webm.headers["content-type"] == "video/webm" and decode_video(webm.content).frames.shape[0] == 13
    assert decode_video(sync(url, story).content).frames.shape[0] == 13


def test_animate_image(url):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(buf, "PNG")
    b64 = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    r = sync(url, {"prompts": ["it moves"], "image_b64": b64, "steps": 2})
    assert r.status_code == 200, r.text
    assert decode_video(r.content).frames.shape == (9, SIZE, SIZE, 3)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"prompts": []}, 400, "at least one prompt"),
        ({"prompts": ["ok", "  "]}, 400, "empty"),
        ({"prompts": list("abcdefghi")}, 400, "at most 8"),
        ({"prompt": "x" * 100_000}, 400, "100000 characters; at most 500"),
        ({"prompts": ["a"], "image_b64": "not base64!!"}, 400, "base64"),
        ({"prompts": ["a"], "image_b64": base64.b64encode(b"not an image").decode()}, 400, "image"),
        ({"prompts": ["a"], "format": "avi"}, 422, "mp4"),
        ({"prompts": ["a"], "steps": 0}, 422, "steps"),
        ({"prompts": ["a"], "steps": 20_001}, 400, "at most 20000"),
        ({"prompts": ["a", "b"], "context_frames": 4}, 400, "context_frames"),
        ({"prompts": ["a"], "guidance": 2}, 422, "guidance"),
        ({"prompts": ["a"], "guidance_scale": 1e308}, 422, "less than or equal to 100"),
        ({"prompts": ["a"], "seed": 10**30}, 422, "seed"),
        ({"promt": "a"}, 422, "Extra inputs"),
        # a COMMIT request sent to a Phenaki checkpoint: named as such, with the fix
        ({"task": "fp", "video_b64": "AAAA"}, 400, "serve a COMMIT checkpoint"),
        ({"prompts": ["a"], "class_id": 1}, 400, "class_id: COMMIT (MAGVIT) fields"),
    ],
)
def test_bad_requests_get_4xx_with_a_message(url, body, status, message):
    r = sync(url, body)
    assert r.status_code == status, r.text
    assert message in r.text
    assert len(r.text) < 5000  # a huge field is never echoed back whole


def test_oversized_bodies_are_refused_before_parsing(url):
    r = requests.post(f"{url}/v1/videos", data=b"{" + b" " * (16 * 2**20), headers={**KEY, "Content-Type":
                      "application/json"}, timeout=60)  # fmt: skip
    assert r.status_code == 413 and "max_body_bytes" in r.text


def test_a_job_reports_progress_events_then_its_video(url):
    body = {"prompts": ["a red circle", "a blue square"], "steps": 300, "seed": 5}
    created = submit(url, body)
    assert created["status"] == "queued" and created["progress"] == 0.0
    seen = events(url, created["id"])
    progress = [view["progress"] for event, view in seen if event == "progress"]
    assert len(progress) >= 3 and progress == sorted(progress) and 0 < progress[-1] < 1
    event, final = seen[-1]
    assert event == "done" and final["status"] == "succeeded" and final["progress"] == 1.0
    assert final["frames"] == 13 and final["queue_seconds"] >= 0 and final["run_seconds"] > 0
    content = requests.get(f"{url}{final['result_url']}", headers=KEY, timeout=30)
    assert content.status_code == 200 and decode_video(content.content).frames.shape[0] == 13
    assert sync(url, body).content == content.content  # the same request, the same video


def test_cancel_stops_the_work_at_the_next_step(url):
    created = submit(url, LONG)
    running = events(url, created["id"], until=lambda view: view["progress"] > 0.02)[-1][1]
    cancelled_at = time.time()
    r = requests.delete(f"{url}/v1/videos/{created['id']}", headers=KEY, timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    # the replica is free again long before the cancelled job could have finished
    rate = running["progress"] / running["run_seconds"]
    remaining = (1 - running["progress"]) / rate
    after = sync(url, {"prompt": "next", "steps": 2})
    assert after.status_code == 200
    started = job(url, after.headers["X-Phenaki-Job"])["started_at"]
    assert started - cancelled_at < remaining / 2, (started - cancelled_at, remaining)
    final = job(url, created["id"])
    assert final["status"] == "cancelled" and final["error"]["code"] == "cancelled" and final["progress"] < 1
    assert (
        requests.get(f"{url}/v1/videos/{created['id']}/content", headers=KEY, timeout=30).status_code == 409
    )
    assert requests.get(f"{url}/v1/videos/nope", headers=KEY, timeout=30).status_code == 404


def test_concurrent_requests_share_batches_and_each_gets_its_own_video(url):
    bodies = [
        {"prompt": f"a {colour} circle moving left", "seed": i, "steps": 40, "guidance_scale": 0.5 * i}
        for i, colour in enumerate(["red", "green", "blue", "yellow", "purple", "orange"])
    ]
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(lambda body: sync(url, body), bodies))
    assert all(r.status_code == 200 for r in together)
    assert max(int(r.headers["X-Phenaki-Batch"]) for r in together) > 1
    for body, r in zip(bodies, together, strict=True):
        alone = sync(url, body)
        assert alone.headers["X-Phenaki-Batch"] == "1" and alone.content == r.content, body


def test_overload_is_a_fast_503_with_retry_after_while_accepted_jobs_finish(url):
    """One long job holds the sampler; short clips queue behind it up to max_queued; the next request is
    refused at once with Retry-After, and every accepted job still finishes once the long one is gone."""
    blocker = submit(url, LONG)["id"]
    events(url, blocker, until=lambda view: view["status"] == "running")
    clip = {"steps": 8}
    accepted = [
        submit(url, {**clip, "prompt": f"clip {i}", "seed": i})["id"] for i in range(LIMITS["max_queued"])
    ]
    refused = requests.post(
        f"{url}/v1/videos", json={**clip, "prompt": "one too many"}, headers=KEY, timeout=60
    )
    assert refused.status_code == 503, [job(url, i)["status"] for i in accepted]
    assert int(refused.headers["Retry-After"]) >= 1 and "jobs are waiting" in refused.text
    assert requests.get(f"{url}/v1/stats", headers=KEY, timeout=30).json()["queued"] == LIMITS["max_queued"]
    requests.delete(f"{url}/v1/videos/{blocker}", headers=KEY, timeout=30)
    finals = [events(url, job_id)[-1][1] for job_id in accepted]
    assert [f["status"] for f in finals] == ["succeeded"] * len(accepted)
    assert max(f["batch_size"] for f in finals) > 1  # the queued clips shared sampler calls


def test_a_slow_sync_request_is_408_and_a_client_that_leaves_cancels_its_job(url):
    r = sync(url, LONG, timeout_s=0.5)
    assert r.status_code == 408 and "POST /v1/videos" in r.text
    cancelled = requests.get(f"{url}/v1/stats", headers=KEY, timeout=30).json()["jobs"].get("cancelled", 0)
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(f"{url}/v1/videos/sync", json=LONG, headers=KEY, timeout=1.0)
    deadline = time.time() + 30
    while time.time() < deadline:
        stats = requests.get(f"{url}/v1/stats", headers=KEY, timeout=30).json()
        if stats["jobs"].get("cancelled", 0) > cancelled and stats["running"] == 0:
            break
        time.sleep(0.5)
    assert stats["jobs"].get("cancelled", 0) > cancelled and stats["running"] == 0


def test_api_keys_and_the_rate_limit(url):
    for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}):
        r = requests.get(f"{url}/v1/models", headers=headers, timeout=10)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer" and "API key" in r.text
    assert requests.get(f"{url}/v1/models", headers={"Authorization": "Bearer test-key"}, timeout=10).ok
    limited = []
    for _ in range(2 * RATE):  # a bucket of RATE, refilled at RATE/60 a second
        r = requests.get(f"{url}/v1/stats", headers={"X-API-Key": "burst-key"}, timeout=10)
        if r.status_code == 429:
            limited.append(r)
            break
    assert limited and int(limited[0].headers["Retry-After"]) >= 1 and "requests a minute" in limited[0].text
    assert requests.get(f"{url}/v1/stats", headers=KEY, timeout=10).ok  # another key has its own bucket


def test_the_serving_doc_curl_block(url, tmp_path):
    """docs/serving.md's curl session against this server (with this module's key): a story, then a job
    followed by its events and fetched as webm."""
    from tests.doc_blocks import doc_block, run_block, venv_env

    block = doc_block("docs/serving.md", "tests/test_serve.py::test_the_serving_doc_curl_block")
    host = url.removeprefix("http://")
    proc = run_block(block, {"localhost:8000": host, "curl ": "curl -H 'X-API-Key: test-key' "}, cwd=tmp_path,
                     env=venv_env(), timeout=120)  # fmt: skip
    assert "x-phenaki-segments: [[0, 9], [9, 13]]" in proc.stdout.lower()
    assert "event: done" in proc.stdout and '"status": "succeeded"' in proc.stdout
    assert decode_video(str(tmp_path / "story.mp4")).frames.shape[0] == 13
    assert decode_video(str(tmp_path / "triangle.webm")).frames.shape == (9, SIZE, SIZE, 3)


def test_start_refuses_a_second_port_while_serve_runs(url, tmp_path):
    from jobs.serving.app import start

    ckpt = write_debug_checkpoint(tmp_path / "other")
    with pytest.raises((RuntimeError, TimeoutError), match="stop\\(\\)"):
        start(ckpt, host="127.0.0.1", port=free_port(), timeout_s=20)
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200  # the running app is untouched
