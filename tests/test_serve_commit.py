"""The Serve endpoint hosting a MAGVIT COMMIT checkpoint: real HTTP against 127.0.0.1 on a free port.

The checkpoint is an untrained tiny one (`write_debug_commit_checkpoint`: the magvit_vq_debug 3D-VQ, 16x32x32
clips, 4x4x4 tokens, 4 classes), so a request costs milliseconds: what is checked is the plumbing, i.e. that
each of the ten tasks answers with the same video `CommitGenerator` makes locally from the same input and seed,
and that what the model cannot serve gets a 4xx naming the fix.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import requests
from PIL import Image

from jobs.generate import read_condition
from modeling.commit import CLASS_TASKS, TASKS
from modeling.commit_generation import write_debug_commit_checkpoint
from pipelines.media import decode_video, encode_mp4
from tests.serve_helpers import free_port, post

pytestmark = [pytest.mark.ray, pytest.mark.slow]

FRAMES, SIZE, MAX_STEPS = 16, 32, 8
CLASSES = ("left", "right", "up", "down")
VIDEO = "<the clip>"  # stands for the clip's base64 in parametrized bodies


def clip_frames() -> np.ndarray:
    """A light background with a dark square moving right: (FRAMES, SIZE, SIZE, 3) uint8."""
    frames = np.full((FRAMES, SIZE, SIZE, 3), 220, dtype=np.uint8)
    for t in range(FRAMES):
        frames[t, 10:20, t : t + 10] = (200, 30, 30)
    return frames


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_debug_commit_checkpoint(
        tmp_path_factory.mktemp("serve_commit") / "commit", class_names=CLASSES
    )


@pytest.fixture(scope="module")
def url(ray_local, ckpt):
    from jobs.serving.app import start, stop

    base = start(
        ckpt, host="127.0.0.1", port=free_port(), num_cpus=0.5, device="cpu", limits={"max_steps": MAX_STEPS}
    )
    yield base
    stop()


@pytest.fixture(scope="module")
def mp4() -> bytes:
    return encode_mp4(clip_frames(), 8.0)


@pytest.fixture(scope="module")
def local(ckpt):
    from modeling.commit_generation import CommitGenerator

    return CommitGenerator.from_checkpoint(ckpt, device="cpu")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_health_models_and_page(url):
    assert requests.get(f"{url}/healthz", timeout=10).json() == {
        "status": "ok",
        "family": "commit",
        "busy": False,
    }
    [card] = requests.get(f"{url}/v1/models", timeout=10).json()["data"]
    assert (card["family"], card["title"], card["tasks"], card["limits"]["max_steps"]) == (
        "commit", "MAGVIT COMMIT", list(TASKS), MAX_STEPS,
    )  # fmt: skip
    info = card["info"]
    assert (card["family"], info["num_frames"], info["image_size"], info["fps"]) == (
        "commit",
        FRAMES,
        SIZE,
        8.0,
    )
    assert info["tasks"] == list(TASKS) and info["video_tasks"] == [t for t in TASKS if t != "cg"]
    assert (info["num_classes"], info["class_names"], info["text"]) == (4, list(CLASSES), False)
    assert info["token_grid"] == [4, 4, 4] and info["defaults"]["steps"] == 2
    page = requests.get(f"{url}/", timeout=10)  # one page for both families: it reads /v1/models
    script = requests.get(f"{url}/static/app.js", timeout=10)
    assert page.status_code == 200 and "static/app.js" in page.text
    assert "video_b64" in script.text and "v1/models" in script.text


def test_every_task_answers_the_local_generators_video(url, mp4, local):
    """Each task over HTTP = `CommitGenerator.generate` here on the same input and seed (the replica and this
    process both run 1 torch thread on CPU): the same condition-kept share (a token-level check), and the
    decoded videos agree, over the task's given pixels and everywhere."""
    import torch

    frames = read_condition(local, mp4)  # what `phenaki generate --input` and the server read
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for i, task in enumerate(TASKS):
            body = {"task": task, "seed": 10 + i, "steps": 3}
            if task != "cg":
                body["video_b64"] = b64(mp4)
            if task in CLASS_TASKS:
                body["class_id"] = 1
            r = post(url, body)
            assert r.status_code == 200, (task, r.text)
            assert r.headers["content-type"] == "video/mp4" and r.headers["X-Phenaki-Task"] == task
            assert r.headers["X-Phenaki-Frames"] == str(FRAMES) and r.headers["X-Phenaki-Seed"] == str(10 + i)
            served = decode_video(r.content).frames
            assert served.shape == (FRAMES, SIZE, SIZE, 3)
            out = local.generate(
                task, None if task == "cg" else frames, class_ids=[1] if task in CLASS_TASKS else None,
                seed=10 + i, steps=3,
            )  # fmt: skip
            assert r.headers["X-Phenaki-Kept"] == f"{out.kept_fraction():.4f}", task
            expected = decode_video(encode_mp4(out.frames[0], local.fps)).frames  # the same lossy encoding
            diff = np.abs(served.astype(np.int16) - expected.astype(np.int16))
            given = out.pixel_mask[0, 0].numpy()  # (T, H, W): the task's condition region
            if given.any():
                assert diff[given].mean() <= 1.0, task
            assert diff.mean() <= 1.0, task
    finally:
        torch.set_num_threads(threads)


def test_class_names_gif_and_a_still_as_input(url):
    by_name = post(url, {"task": "cg", "class_id": "up", "seed": 3})
    by_id = post(url, {"task": "cg", "class_id": 2, "seed": 3})
    assert by_name.status_code == by_id.status_code == 200 and by_name.content == by_id.content
    gif = post(
        url,
        {
            "task": "cfp",
            "class_id": "left",
            "video_b64": b64(encode_mp4(clip_frames(), 8.0)),
            "format": "gif",
        },
    )
    assert gif.status_code == 200 and gif.content[:6] == b"GIF89a"
    buf = io.BytesIO()
    Image.fromarray(clip_frames()[0]).resize((48, 40)).save(buf, "PNG")  # fp from one still: cropped, held
    still = post(url, {"task": "fp", "video_b64": "data:image/png;base64," + b64(buf.getvalue())})
    assert still.status_code == 200, still.text
    assert decode_video(still.content).frames.shape == (FRAMES, SIZE, SIZE, 3)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"prompts": ["a red circle moving left"]}, 400, "give `task`"),
        ({"task": "xx", "video_b64": VIDEO}, 422, "'fp', 'fi', 'opc'"),
        ({"task": "fp"}, 400, "task fp needs the condition video"),
        ({"task": "opd", "video_b64": "not base64!!"}, 400, "video_b64: not valid base64"),
        ({"task": "fi", "video_b64": b64(b"no video, no image")}, 400, "neither a video nor an image"),
        ({"task": "cg"}, 400, "task cg needs `class_id` (0..3 or a name: left, right, up, down"),
        ({"task": "cfp", "video_b64": VIDEO, "class_id": 4}, 400, "class id must be in [-1, 4)"),
        ({"task": "cg", "class_id": "sideways"}, 400, "unknown class 'sideways'"),
        ({"task": "fp", "video_b64": VIDEO, "class_id": 1}, 400, "class_id: conditions only cg and cfp"),
        ({"task": "fp", "video_b64": VIDEO, "prompts": ["a"]}, 400, "trained without text"),
        ({"task": "fp", "video_b64": VIDEO, "image_b64": VIDEO}, 422, "image_b64 is a Phenaki field"),
        (
            {"task": "fp", "video_b64": VIDEO, "context_frames": 5},
            422,
            "serve a Phenaki (MaskGIT) checkpoint",
        ),
        ({"prompts": ["a"], "context_frames": 5}, 400, "context_frames: Phenaki fields"),
        ({"task": "fp", "video_b64": VIDEO, "steps": 100}, 400, f"at most {MAX_STEPS}"),
        ({"task": "fp", "video_b64": VIDEO, "format": "avi"}, 422, "mp4"),
        ({"task": "fp", "video": VIDEO}, 422, "Extra inputs"),
    ],
)
def test_bad_requests_get_4xx_with_a_message(url, mp4, body, status, message):
    body = {k: b64(mp4) if v == VIDEO else v for k, v in body.items()}
    r = post(url, body)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"] if status == 400 else message in r.text
