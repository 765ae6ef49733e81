"""The parts of `phenaki serve` that need no Ray: the request contract (jobs.serving.api), the job board
(jobs.serving.store), keys, rate limits and the body bound (jobs.serving.auth), and each family's request
check and batched run against a real (tiny, untrained) generator (jobs.serving.families). The service itself,
over HTTP on Serve, is tests/test_serve.py."""

from __future__ import annotations

import base64
import hashlib
import io

import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import TypeAdapter, ValidationError

from jobs.serving.api import CommitRequest, Limits, PhenakiRequest, VideoRequest
from jobs.serving.auth import ApiKeys, BodyLimit, RateLimiter
from jobs.serving.families import CommitFamily, PhenakiFamily, RequestError
from jobs.serving.store import JobStore, Overloaded
from modeling.generation import VideoGenerator, write_debug_checkpoint

REQUEST = TypeAdapter(VideoRequest)


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


# ---- the contract --------------------------------------------------------------------------------------------
def test_the_request_union_is_told_apart_by_commit_fields():
    assert isinstance(REQUEST.validate_python({"prompt": "a red circle"}), PhenakiRequest)
    assert isinstance(REQUEST.validate_python({"prompts": ["a", "b"], "seed": 3}), PhenakiRequest)
    assert isinstance(REQUEST.validate_python({"task": "fp", "video_b64": "AAAA"}), CommitRequest)
    assert isinstance(REQUEST.validate_python({"class_id": 2}), CommitRequest)  # the server names the fix
    assert REQUEST.validate_python({"prompt": "x"}).prompt_list() == ["x"]
    with pytest.raises(ValidationError, match="not both"):
        REQUEST.validate_python({"prompt": "a", "prompts": ["b"]})
    with pytest.raises(ValidationError, match="Extra inputs"):
        REQUEST.validate_python({"task": "fp", "image_b64": "AAAA"})


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "a", "guidance_scale": 1e308}, "guidance_scale"),
        ({"prompt": "a", "guidance_scale": float("nan")}, "guidance_scale"),
        ({"prompt": "a", "temperature": float("inf")}, "temperature"),
        ({"prompt": "a", "sample_temperature": 0}, "sample_temperature"),
        ({"prompt": "a", "seed": 10**30}, "seed"),
        ({"prompt": "a", "seed": -1}, "seed"),
        ({"prompt": "a", "steps": 0}, "steps"),
        ({"prompt": "a", "format": "avi"}, "format"),
        ({"prompt": "a", "schedule": "zigzag"}, "schedule"),
        ({"task": "xx"}, "task"),
    ],
)
def test_ranges_that_hold_for_every_model_are_in_the_schema(body, field):
    with pytest.raises(ValidationError) as info:
        REQUEST.validate_python(body)
    assert any(field in map(str, e["loc"]) for e in info.value.errors())


def test_the_api_offers_exactly_the_formats_media_encodes():
    from jobs.serving.api import FORMATS
    from pipelines.media import VIDEO_FORMATS

    assert tuple(VIDEO_FORMATS) == FORMATS  # the gateway loads no codec library, so it names them itself


def test_openapi_documents_the_v1_routes_with_their_types():
    from jobs.serving.gateway import app

    spec = app.openapi()
    paths = spec["paths"]
    for path in ("/v1/videos", "/v1/videos/sync", "/v1/videos/{job_id}", "/v1/videos/{job_id}/events",
                 "/v1/videos/{job_id}/content", "/v1/models", "/healthz"):  # fmt: skip
        assert path in paths, path
    assert set(paths["/v1/videos/{job_id}"]) == {"get", "delete"}
    assert "202" in paths["/v1/videos"]["post"]["responses"]
    assert "video/mp4" in paths["/v1/videos/sync"]["post"]["responses"]["200"]["content"]
    assert "text/event-stream" in paths["/v1/videos/{job_id}/events"]["get"]["responses"]["200"]["content"]
    schemas = spec["components"]["schemas"]
    assert {"PhenakiRequest", "CommitRequest", "Job", "ModelList"} <= set(schemas)
    assert schemas["PhenakiRequest"]["examples"] and schemas["Job"]["examples"]


# ---- the job board -------------------------------------------------------------------------------------------
def board(clock: Clock, **limits) -> JobStore:
    return JobStore(Limits(**limits), clock=clock)


def test_a_job_goes_queued_running_succeeded_with_timings():
    clock = Clock()
    store = board(clock)
    job = store.create("phenaki", "mp4", 7, ["a"], [])
    assert job["status"] == "queued" and store.stats()["queued"] == 1
    clock.now += 2
    assert store.start([job["id"], "nope"], batch_size=1) == [job["id"]]
    assert store.step([job["id"]], 0.5) == []
    assert store.get(job["id"])["progress"] == 0.5
    store.step([job["id"]], 1.0)  # every sampling step done; the decode and encode still run
    assert store.get(job["id"])["progress"] == 0.99 and store.get(job["id"])["status"] == "running"
    clock.now += 3
    store.finish(job["id"], b"video", "video/mp4", "x.mp4", {"frames": 9, "fps": 8.0})
    view = store.get(job["id"])
    assert (view["status"], view["progress"], view["queue_seconds"], view["run_seconds"]) == (
        "succeeded",
        1.0,
        2,
        3,
    )
    assert view["result_url"] == f"/v1/videos/{job['id']}/content" and view["bytes"] == 5
    assert store.content(job["id"]) == (b"video", "video/mp4", "x.mp4")


def test_cancel_stops_a_job_at_the_next_step_and_drops_a_late_result():
    clock = Clock()
    store = board(clock)
    a, b = (store.create("phenaki", "mp4", 0, ["p"], []) for _ in range(2))
    store.start([a["id"], b["id"]], 2)
    assert store.cancel(a["id"])["status"] == "cancelled"
    assert store.step([a["id"], b["id"]], 0.3) == [a["id"]]  # only the cancelled row stops
    store.finish(a["id"], b"late", "video/mp4", "a.mp4", {})
    assert store.get(a["id"])["status"] == "cancelled" and store.content(a["id"]) is None
    queued = store.create("phenaki", "mp4", 0, ["p"], [])
    store.cancel(queued["id"])
    assert store.start([queued["id"]], 1) == []  # a job cancelled while queued never runs
    assert store.cancel("unknown") is None


def test_timeouts_fail_jobs_and_results_expire_by_age_and_by_size():
    clock = Clock()
    store = board(clock, job_timeout_s=10, result_ttl_s=60, max_result_bytes=10)
    slow = store.create("phenaki", "mp4", 0, ["p"], [])
    store.start([slow["id"]], 1)
    clock.now += 11
    assert store.step([slow["id"]], 0.9) == [slow["id"]]
    assert store.get(slow["id"])["error"]["code"] == "timeout"
    waiting = store.create("phenaki", "mp4", 0, ["p"], [])
    clock.now += 11
    assert store.start([waiting["id"]], 1) == [] and store.get(waiting["id"])["status"] == "failed"

    first, second = (store.create("phenaki", "mp4", 0, ["p"], []) for _ in range(2))
    for job in (first, second):
        store.start([job["id"]], 1)
        store.finish(job["id"], b"123456", "video/mp4", "v.mp4", {})  # 6 + 6 bytes > 10: the older goes
    assert store.content(first["id"]) is None and store.get(first["id"])["error"]["code"] == "expired"
    assert store.content(second["id"]) is not None and store.stats()["result_bytes"] == 6
    clock.now += 61
    assert store.get(second["id"]) is None  # past result_ttl_s: forgotten


def test_admission_refuses_beyond_max_queued_with_a_retry_hint():
    store = board(Clock(), max_queued=2)
    for _ in range(2):
        store.create("phenaki", "mp4", 0, ["p"], [])
    with pytest.raises(Overloaded, match="2 jobs are waiting") as info:
        store.create("phenaki", "mp4", 0, ["p"], [])
    assert 1 <= info.value.retry_after_s <= 600
    busy = store.overloaded()
    assert "2 jobs are waiting" in busy["overloaded"] and busy["retry_after_s"] == info.value.retry_after_s
    assert board(Clock(), max_queued=2).overloaded() is None


# ---- keys, rate, body ----------------------------------------------------------------------------------------
def test_api_keys_from_a_file_plain_or_hashed(tmp_path):
    hashed = hashlib.sha256(b"second-key").hexdigest()
    path = tmp_path / "keys"
    path.write_text(f"# team keys\nfirst-key\n\nsha256:{hashed}\n")
    keys = ApiKeys.from_file(path)
    assert keys.identify({"x-api-key": "first-key"}) is not None
    assert keys.identify({"authorization": "Bearer second-key"}) == hashed
    assert keys.identify({"x-api-key": "wrong"}) is None and keys.identify({}) is None
    assert ApiKeys.from_file(None) is None
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(ValueError, match="holds no API key"):
        ApiKeys.from_file(tmp_path / "empty")


def test_rate_limiter_is_a_token_bucket_per_client():
    clock = Clock()
    limiter = RateLimiter(per_minute=3, clock=clock)
    assert [limiter.take("a") for _ in range(3)] == [0, 0, 0]
    assert limiter.take("a") == pytest.approx(20.0)  # one token refills in 60/3 s
    assert limiter.take("b") == 0  # each client its own bucket
    clock.now += 20
    assert limiter.take("a") == 0
    assert RateLimiter(0).take("a") == 0  # off


def test_body_limit_answers_413_before_reading_a_large_body():
    app = FastAPI()
    app.add_middleware(BodyLimit, limit=lambda: 100)

    @app.post("/echo")
    async def echo(request: Request) -> dict:
        return {"n": len(await request.body())}

    client = TestClient(app)
    assert client.post("/echo", content=b"x" * 100).json() == {"n": 100}
    big = client.post("/echo", content=b"x" * 101)
    assert big.status_code == 413 and "100-byte limit" in big.json()["detail"]
    chunked = client.post("/echo", content=iter([b"x" * 60, b"x" * 60]))  # no Content-Length
    assert chunked.status_code == 413


# ---- the families against a real generator -------------------------------------------------------------------
@pytest.fixture(scope="module")
def phenaki(tmp_path_factory):
    ckpt = write_debug_checkpoint(tmp_path_factory.mktemp("served") / "transformer", sampling={"steps": 3})
    return VideoGenerator.from_checkpoint(ckpt)


def test_phenaki_check_applies_the_limits_and_reports_truncation(phenaki):
    limits = Limits(max_prompts=2, max_prompt_chars=300, max_steps=5)
    work = PhenakiFamily.check(
        phenaki, PhenakiRequest(prompt=" a red circle ", seed=4, guidance_scale=2), limits
    )
    assert (
        work.prompts == ["a red circle"] and work.warnings == [] and work.batch_key == ("clip", 3, "cosine")
    )
    assert work.params["cfg"] == phenaki.defaults.replace(seed=4, guidance_scale=2.0)
    long = PhenakiFamily.check(phenaki, PhenakiRequest(prompt="word " * 50), limits)
    assert long.warnings == [
        f"prompt 0 has 52 encoder tokens; the model reads the first {phenaki.max_text_length}"
    ]
    story = PhenakiFamily.check(phenaki, PhenakiRequest(prompts=["a", "b"]), limits)
    assert story.batch_key[0] == "story"
    for req, field, message in [
        (PhenakiRequest(prompts=["a", "b", "c"]), "prompts", "at most 2"),
        (PhenakiRequest(prompt="x" * 301), "prompt", "301 characters; at most 300"),
        (PhenakiRequest(prompt="a", steps=6), "steps", "at most 5"),
        (PhenakiRequest(prompts=[]), "prompts", "at least one prompt"),
        (PhenakiRequest(prompt="a", image_b64="!!"), "image_b64", "base64"),
        (CommitRequest(task="fp"), "task", "serve a COMMIT checkpoint"),
    ]:
        with pytest.raises(RequestError, match=message) as info:
            PhenakiFamily.check(phenaki, req, limits)
        assert info.value.field == field
    image = base64.b64encode(b"\x89PNG not really").decode()
    with pytest.raises(RequestError, match="not an image"):
        PhenakiFamily.check(phenaki, PhenakiRequest(prompt="a", image_b64=image), limits)
    png = io.BytesIO()
    Image.new("RGB", (100, 80)).save(png, "PNG")
    big = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
    with pytest.raises(RequestError, match=r"max_image_pixels 5000") as info:
        PhenakiFamily.check(phenaki, PhenakiRequest(prompt="a", image_b64=big), Limits(max_image_pixels=5000))
    assert info.value.status == 413 and info.value.field == "image_b64"
    assert PhenakiFamily.check(phenaki, PhenakiRequest(prompt="a", image_b64=big), limits).params["image"].shape == (
        phenaki.image_size, phenaki.image_size, 3,
    )  # fmt: skip


def test_a_batched_run_gives_each_request_its_own_video(phenaki):
    """What the sampler replica does with a merged batch: three requests with different prompts, seeds,
    guidance and temperatures in one call, each equal to the request sampled alone."""
    limits = Limits()
    reqs = [
        PhenakiRequest(prompt="a red circle moving left", seed=1),
        PhenakiRequest(prompt="a blue square moving up", seed=2, guidance_scale=1.5, temperature=2.0),
        PhenakiRequest(prompt="a green triangle", seed=3, sample_temperature=0.8),
    ]
    works = [PhenakiFamily.check(phenaki, r, limits) for r in reqs]
    assert len({w.batch_key for w in works}) == 1
    steps = []
    outputs = PhenakiFamily.run(phenaki, works, lambda done, total: steps.append((done, total)))
    assert steps == [(1, 3), (2, 3), (3, 3)]
    for work, out in zip(works, outputs, strict=True):
        alone = phenaki.generate(work.prompts, work.params["cfg"])
        assert np.array_equal(out.frames, alone.frames)
        assert out.segments == [{"prompt": work.prompts[0], "start": 0, "end": 9}]


def test_commit_check_on_a_text_model(tmp_path):
    from modeling.commit_generation import CommitGenerator, write_debug_commit_checkpoint

    generator = CommitGenerator.from_checkpoint(
        write_debug_commit_checkpoint(tmp_path / "text", text_dim=384)
    )
    work = CommitFamily.check(
        generator, CommitRequest(task="cg", prompts=[" a red circle "], seed=4), Limits()
    )
    params = work.params
    assert (params["task"], params["prompts"], params["class_ids"], params["frames"], params["seed"]) == (
        "cg", ["a red circle"], None, None, 4,
    )  # fmt: skip
    for req, message in [
        (CommitRequest(task="cg", prompts=["a", "b"]), "at most 1"),
        (CommitRequest(task="cfp", video_b64="AAAA"), "or a prompt"),
        (CommitRequest(class_id=1), "give `task`"),
        (PhenakiRequest(prompt="a", image_b64="AAAA"), "image_b64: Phenaki fields"),
    ]:
        with pytest.raises(RequestError, match=message):
            CommitFamily.check(generator, req, Limits())
    out = CommitFamily.run(generator, [work], None)[0]
    assert (
        out.frames.shape == (generator.num_frames, 32, 32, 3)
        and out.task == "cg"
        and out.kept_fraction is None
    )


def test_build_app_refuses_a_tokenizer_checkpoint(tmp_path):
    from jobs.serving.app import ServeArgs, build_app

    ckpt = write_debug_checkpoint(tmp_path / "transformer")
    with pytest.raises(ValueError, match="generation takes a transformer checkpoint"):
        build_app(ServeArgs(checkpoint=str(ckpt / "tokenizer")))
    with pytest.raises(ValidationError, match="min_replicas=3 > max_replicas=1"):
        ServeArgs(checkpoint=str(ckpt), min_replicas=3)
    with pytest.raises(ValidationError, match="Extra inputs"):
        ServeArgs(checkpoint=str(ckpt), max_segments=8)  # a key of the old server: refused, not ignored
