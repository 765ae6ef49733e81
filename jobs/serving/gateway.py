"""The HTTP face of `phenaki serve` (FastAPI on a Serve ingress deployment): the `/v1` video API, the page,
health, and the guards in front of the sampler (API keys, per-key rate limit, body size, admission).

    POST   /v1/videos               a `VideoRequest` -> 202 and the `Job` (poll it, or follow its events)
    POST   /v1/videos/sync          the same, answered with the video itself (short requests; 408 after
                                    `request_timeout_s`; a client that disconnects cancels its job)
    GET    /v1/videos/{id}          the `Job`: status, progress 0-1, timings, result_url
    GET    /v1/videos/{id}/events   server-sent events: `progress` on every change, `done` at the end
    GET    /v1/videos/{id}/content  the video (mp4, webm or gif)
    DELETE /v1/videos/{id}          cancel: the sampler drops it at its next step
    GET    /v1/models               the loaded model, its family, tasks, formats and limits
    GET    /v1/stats                jobs by status, queue depth, bytes kept
    GET    /healthz                 200 when the sampler answers its model check, else 503
    GET    /                        the web page (jobs/static/)

Errors are JSON `{"detail": ...}`: 400 a request the model cannot serve (naming the field), 401 no or unknown
API key, 404 unknown or expired job, 408 too slow, 413 body or media too large, 422 schema (naming the field),
429 rate limited and 503 overloaded (both with Retry-After).
"""

# No `from __future__ import annotations`: FastAPI resolves the route annotations inside the replica. Helpers are
# defined before the deployment class: Serve pickles the class with the globals it sees then.
import asyncio
import contextvars
import json
import logging
from importlib.resources import files

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve.exceptions import BackPressureError

from jobs.serving.api import FINISHED, PHENAKI_ONLY, Job, Limits, ModelList, VideoRequest
from jobs.serving.auth import ApiKeys, BodyLimit, RateLimiter, retry_after
from jobs.serving.families import RequestError

log = logging.getLogger("phenaki.serve")
STATIC = {"app.js": "text/javascript", "style.css": "text/css"}  # jobs/static/, besides index.html
OPEN_PATHS = ("/", "/healthz", "/docs", "/openapi.json", "/static/")  # need no API key
EVENT_POLL_S = 0.2
KEEPALIVE_S = 15.0

app = FastAPI(
    title="phenaki-ray",
    version="1",
    description="Text-to-video (Phenaki MaskGIT) and MAGVIT COMMIT tasks on Ray Serve: submit a job, follow its "
    "progress, fetch the video. API keys: `Authorization: Bearer KEY` or `X-API-Key: KEY`.",
)
app.state.max_body_bytes = Limits().max_body_bytes
app.add_middleware(BodyLimit, limit=lambda: app.state.max_body_bytes)


def static_file(name: str) -> str:
    return (files("jobs") / "static" / name).read_text(encoding="utf-8")


def error(status: int, message: str, headers: dict | None = None) -> HTTPException:
    return HTTPException(status, message, headers=headers)


def explained(errors: list[dict]) -> list[dict]:
    """FastAPI's 422 errors, with long inputs cut (never echo a huge field) and a hint where a field of the
    other family made the request the wrong kind."""
    out = []
    for e in errors:
        e = dict(e)
        if len(repr(e.get("input"))) > 200:
            e.pop("input")
        loc = e.get("loc") or ()
        if (
            e.get("type") == "extra_forbidden"
            and len(loc) >= 3
            and loc[1] == "commit"
            and loc[-1] in PHENAKI_ONLY
        ):
            e["msg"] += (f": {loc[-1]} is a Phenaki field, but `task` (or `video_b64`, `class_id`) makes this a "
                         "COMMIT request. For text-to-video, stories and animating stills, serve a Phenaki "
                         "(MaskGIT) checkpoint")  # fmt: skip
        out.append(e)
    return out


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"detail": explained(jsonable_encoder(exc.errors()))}, status_code=422)


def sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def video_headers(view: dict, filename: str) -> dict:
    """The video's facts as X-Phenaki-* headers (segments as frame ranges: prompts stay in the job record,
    never echoed into headers)."""
    headers = {
        "X-Phenaki-Job": view["id"],
        "X-Phenaki-Seconds": f"{view.get('run_seconds') or 0:.3f}",
        "X-Phenaki-Duration": f"{view['frames'] / view['fps']:.3f}",
        "X-Phenaki-Frames": str(view["frames"]),
        "X-Phenaki-Fps": f"{view['fps']:g}",
        "X-Phenaki-Seed": str(view["seed"]),
        "X-Phenaki-Batch": str(view.get("batch_size") or 1),
        "Content-Disposition": f'inline; filename="{filename}"',
    }
    if view.get("segments"):
        headers["X-Phenaki-Segments"] = json.dumps([[s["start"], s["end"]] for s in view["segments"]])
    if view.get("task"):
        headers["X-Phenaki-Task"] = view["task"]
        kept = view.get("kept_fraction")
        headers["X-Phenaki-Kept"] = "nan" if kept is None else f"{kept:.4f}"
    if view.get("warnings"):
        headers["X-Phenaki-Warnings"] = str(len(view["warnings"]))
    return headers


app.add_exception_handler(RequestValidationError, validation_error)


@serve.deployment(name="gateway", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
@serve.ingress(app)
class Gateway:
    def __init__(self, sampler, jobs, limits: dict, api_keys_file: str | None = None):
        self.sampler, self.jobs = sampler, jobs  # DeploymentHandles
        self.limits = Limits(**limits)
        app.state.max_body_bytes = self.limits.max_body_bytes
        self.keys = ApiKeys.from_file(api_keys_file)
        self.rate = RateLimiter(self.limits.rate_per_minute)
        self._card: dict | None = None
        self._tasks: set[asyncio.Task] = set()  # jobs being driven to a sampler

    # ---- guards ------------------------------------------------------------------------------------------
    def _admit(self, request: Request) -> str:
        """The client's identity (its key's digest, or its address without auth); 401 / 429 otherwise."""
        client = request.client.host if request.client else "unknown"
        if self.keys is not None:
            client = self.keys.identify(request.headers)
            if client is None:
                raise error(401, "missing or unknown API key: send `Authorization: Bearer KEY` or "
                            "`X-API-Key: KEY`", {"WWW-Authenticate": "Bearer"})  # fmt: skip
        wait = self.rate.take(client)
        if wait:
            raise error(429, f"rate limit: {self.limits.rate_per_minute:g} requests a minute per key",
                        {"Retry-After": retry_after(wait)})  # fmt: skip
        return client

    async def _card_facts(self) -> dict:
        if self._card is None:
            self._card = await self.sampler.card.remote()
        return self._card

    # ---- page and health ---------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index(self) -> str:
        return static_file("index.html")

    @app.get("/static/{name}", include_in_schema=False)
    def static(self, name: str) -> Response:
        if name not in STATIC:
            raise error(404, f"no static file {name!r}")
        return Response(static_file(name), media_type=STATIC[name])

    @app.get("/healthz")
    async def healthz(self) -> JSONResponse:
        try:
            health = await asyncio.wait_for(self.sampler.health.remote(), 20)
        except Exception as e:  # noqa: BLE001 - any failure is "not healthy", with its reason
            return JSONResponse({"status": "unavailable", "detail": f"{type(e).__name__}: {e}"}, 503)
        return JSONResponse(health)

    @app.get("/v1/models", response_model=ModelList)
    async def models(self, request: Request) -> dict:
        self._admit(request)
        return {"object": "list", "data": [await self._card_facts()]}

    @app.get("/v1/stats")
    async def stats(self, request: Request) -> dict:
        self._admit(request)
        return await self.jobs.stats.remote()

    # ---- jobs --------------------------------------------------------------------------------------------
    async def _submit(self, request: Request, body) -> tuple[dict, asyncio.Task]:
        self._admit(request)
        if busy := await self.jobs.overloaded.remote():  # before the sampler: a refusal must not wait for it
            raise error(503, f"overloaded: {busy['overloaded']}", {"Retry-After": str(busy["retry_after_s"])})
        try:
            work = await self.sampler.prepare.remote(body)
        except BackPressureError as e:
            raise error(503, f"overloaded: {e}", {"Retry-After": "5"}) from e
        if isinstance(work, RequestError):
            raise error(work.status, str(work))
        view = await self.jobs.create.remote(
            work.family, work.fmt, work.seed, work.prompts, work.warnings, work.params.get("task")
        )
        if "overloaded" in view:
            raise error(503, f"overloaded: {view['overloaded']}", {"Retry-After": str(view["retry_after_s"])})
        return view, self._detach(self._drive(view["id"], work))

    def _detach(self, coroutine) -> asyncio.Task:
        """Run `coroutine` as a task the request does not own (kept referenced until it ends). It gets an empty
        context: in the request's, Serve would count its calls as the request's own and cancel them with it."""
        task = asyncio.get_running_loop().create_task(coroutine, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _cancel(self, job_id: str, reason: str) -> None:
        log.info("cancelling job %s: %s", job_id, reason)
        await self.jobs.cancel.remote(job_id, reason)

    async def _drive(self, job_id: str, work) -> None:
        """Hand the job to a sampler replica and record how it failed if it did not run."""
        try:
            await self.sampler.run.remote((job_id, work))
        except BackPressureError:
            await self.jobs.fail.remote(job_id, "overloaded", "every sampler replica is full; retry later")
        except Exception as e:  # noqa: BLE001 - recorded on the job
            log.exception("job %s failed", job_id)
            await self.jobs.fail.remote(job_id, "internal", f"{type(e).__name__}: {e}")

    @app.post("/v1/videos", status_code=202, response_model=Job)
    async def create(self, request: Request, body: VideoRequest) -> dict:
        view, _ = await self._submit(request, body)
        return view

    @app.post(
        "/v1/videos/sync",
        response_class=Response,
        responses={200: {"content": {"video/mp4": {}, "video/webm": {}, "image/gif": {}},
                         "description": "the video; X-Phenaki-* headers carry its facts"}},
    )  # fmt: skip
    async def create_sync(
        self,
        request: Request,
        body: VideoRequest,
        timeout_s: float | None = Query(
            None, gt=0, description="wait at most this long (<= request_timeout_s)"
        ),
    ) -> Response:
        view, task = await self._submit(request, body)
        job_id = view["id"]
        wait = min(timeout_s or self.limits.request_timeout_s, self.limits.request_timeout_s)
        try:
            await asyncio.wait_for(asyncio.shield(task), wait)
        except TimeoutError as e:
            await self.jobs.cancel.remote(job_id, "the synchronous request timed out")
            raise error(408, f"not done within {wait:g} s (request_timeout_s {self.limits.request_timeout_s:g} s): "
                        "use POST /v1/videos and follow the job instead") from e  # fmt: skip
        except asyncio.CancelledError:  # Serve cancels a request whose client went away: stop the work too
            # in a task of its own: this one is being cancelled and may not get to await anything
            self._detach(self._cancel(job_id, "the client disconnected"))
            raise
        view = await self.jobs.get.remote(job_id)
        if view is None or view["status"] != "succeeded":
            problem = (view or {}).get("error") or {"code": "internal", "message": "the job vanished"}
            status = {"timeout": 408, "overloaded": 503, "cancelled": 409}.get(problem["code"], 500)
            raise error(status, f"{problem['code']}: {problem['message']}")
        content, media_type, filename = await self.jobs.content.remote(job_id)
        return Response(content, media_type=media_type, headers=video_headers(view, filename))

    @app.get("/v1/videos/{job_id}", response_model=Job)
    async def job(self, request: Request, job_id: str) -> dict:
        self._admit(request)
        return await self._view(job_id)

    async def _view(self, job_id: str) -> dict:
        view = await self.jobs.get.remote(job_id)
        if view is None:
            raise error(404, f"no job {job_id!r} (unknown, or finished longer than result_ttl_s ago)")
        return view

    @app.delete("/v1/videos/{job_id}", response_model=Job)
    async def cancel(self, request: Request, job_id: str) -> dict:
        self._admit(request)
        view = await self.jobs.cancel.remote(job_id)
        if view is None:
            raise error(404, f"no job {job_id!r}")
        return view

    @app.get("/v1/videos/{job_id}/content", response_class=Response,
             responses={200: {"content": {"video/mp4": {}, "video/webm": {}, "image/gif": {}}}})  # fmt: skip
    async def content(self, request: Request, job_id: str) -> Response:
        self._admit(request)
        view = await self._view(job_id)
        if view["status"] != "succeeded":
            raise error(409, f"job {job_id} is {view['status']}: no video" + (
                f" ({view['error']['message']})" if view.get("error") else ""))  # fmt: skip
        found = await self.jobs.content.remote(job_id)
        if found is None:
            raise error(410, f"job {job_id}'s video was dropped (result store size limit); generate it again")
        content, media_type, filename = found
        return Response(content, media_type=media_type, headers=video_headers(view, filename))

    @app.get("/v1/videos/{job_id}/events", response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}}}})  # fmt: skip
    async def events(self, request: Request, job_id: str) -> StreamingResponse:
        self._admit(request)
        await self._view(job_id)

        async def stream():
            last, quiet = None, 0.0
            while True:
                view = await self.jobs.get.remote(job_id)
                if view is None:
                    yield sse("error", {"detail": f"job {job_id} expired"})
                    return
                if view != last:
                    done = view["status"] in FINISHED
                    yield sse("done" if done else "progress", view)
                    if done:
                        return
                    last, quiet = view, 0.0
                elif quiet >= KEEPALIVE_S:
                    yield ": keep-alive\n\n"
                    quiet = 0.0
                await asyncio.sleep(EVENT_POLL_S)
                quiet += EVENT_POLL_S

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})  # fmt: skip
