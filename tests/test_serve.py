"""The Serve endpoint on a real local Ray: real HTTP requests against 127.0.0.1 on a free port."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import requests
from PIL import Image

from modeling.generation import write_debug_checkpoint
from pipelines.media import decode_video
from tests.serve_helpers import free_port, post

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def url(ray_local, tmp_path_factory):
    from jobs.serve import start, stop

    ckpt = write_debug_checkpoint(tmp_path_factory.mktemp("serve") / "transformer", sampling={"steps": 4})
    base = start(ckpt, host="127.0.0.1", port=free_port(), max_segments=3, num_cpus=0.5)
    yield base
    stop()


def test_health_page_and_info(url):
    assert requests.get(f"{url}/healthz", timeout=10).json() == {
        "status": "ok",
        "family": "phenaki",
        "tasks": [],
    }
    page = requests.get(f"{url}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert (
        "<textarea" in page.text and "generate" in page.text and "http" not in page.text.split("<script>")[0]
    )
    info = requests.get(f"{url}/info", timeout=10).json()
    assert info["num_frames"] == 9 and info["fps"] == 8.0 and info["text_encoder"] == "minilm"
    assert info["defaults"]["steps"] == 4 and info["max_segments"] == 3
    assert info["family"] == "phenaki" and info["tasks"] == []


def test_generate_mp4(url):
    r = post(url, {"prompts": ["a red circle moving left"], "seed": 1, "steps": 3})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "video/mp4"
    video = decode_video(r.content)
    assert video.frames.shape == (9, 32, 32, 3) and video.fps == pytest.approx(8.0)
    assert float(r.headers["X-Phenaki-Seconds"]) > 0
    assert json.loads(r.headers["X-Phenaki-Segments"]) == [
        {"prompt": "a red circle moving left", "start": 0, "end": 9}
    ]
    again = post(url, {"prompts": ["a red circle moving left"], "seed": 1, "steps": 3})
    assert again.content == r.content  # seeded sampling, deterministic encoder


def test_generate_story_and_gif(url):
    r = post(
        url, {"prompts": ["a red circle", "a blue square"], "seed": 0, "format": "gif", "guidance_scale": 3.0}
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/gif" and r.content[:6] == b"GIF89a"
    assert r.headers["X-Phenaki-Frames"] == "13"
    segments = json.loads(r.headers["X-Phenaki-Segments"])
    assert [(s["start"], s["end"]) for s in segments] == [(0, 9), (9, 13)]
    mp4 = post(url, {"prompts": ["a red circle", "a blue square"], "seed": 0, "guidance_scale": 3.0})
    assert decode_video(mp4.content).frames.shape[0] == 13


def test_animate_image(url):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(buf, "PNG")
    b64 = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    r = post(url, {"prompts": ["it moves"], "image_b64": b64, "steps": 2})
    assert r.status_code == 200, r.text
    assert decode_video(r.content).frames.shape == (9, 32, 32, 3)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"prompts": []}, 400, "at least one prompt"),
        ({"prompts": ["ok", "  "]}, 400, "empty"),
        ({"prompts": ["a", "b", "c", "d"]}, 400, "at most 3 segments"),
        ({"prompts": ["a"], "image_b64": "not base64!!"}, 400, "base64"),
        ({"prompts": ["a"], "image_b64": base64.b64encode(b"not an image").decode()}, 400, "image"),
        ({"prompts": ["a"], "format": "avi"}, 422, "mp4"),
        ({"prompts": ["a"], "steps": 0}, 422, "steps"),
        ({"prompts": ["a"], "steps": 1000}, 400, "at most 64"),
        ({"prompts": ["a", "b"], "context_frames": 4}, 400, "context_frames"),
        ({"prompts": ["a"], "guidance": 2}, 422, "guidance"),
        ({"prompt": "a"}, 422, "Extra inputs"),
        # a COMMIT request sent to a Phenaki checkpoint: named as such, with the fix
        ({"task": "fp", "video_b64": "AAAA"}, 400, "serve a COMMIT checkpoint"),
        ({"prompts": ["a"], "class_id": 1}, 400, "class_id: COMMIT (MAGVIT) fields"),
    ],
)
def test_bad_requests_get_4xx_with_a_message(url, body, status, message):
    r = post(url, body)
    assert r.status_code == status, r.text
    assert message in r.text


def test_start_refuses_a_second_port_while_serve_runs(url, tmp_path):
    from jobs.serve import start

    ckpt = write_debug_checkpoint(tmp_path / "other")
    with pytest.raises((RuntimeError, TimeoutError), match="stop\\(\\)"):
        start(ckpt, host="127.0.0.1", port=free_port(), timeout_s=20)
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200  # the running app is untouched
