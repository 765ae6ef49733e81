"""The Serve deployments behind the gateway: `Sampler` (one loaded generator per replica, either family) and
`JobBoard` (the one shared `JobStore`).

A sampler replica checks requests against its model (`prepare`), and runs jobs through `run`, which
`@serve.batch` feeds: concurrent jobs that arrive within `batch_wait_s` are merged, up to `max_batch`, and
works with the same `Work.batch_key` share one sampler call (Phenaki clips with the same steps and schedule:
prompts, seeds, guidance, temperatures and first images may differ, each row equal to sampling it alone). The
text encoder encodes the batch's prompts at once and the tokenizer decodes the batch at once. Every step asks
the board which rows are still wanted: a cancelled or timed-out job stops at the next step (a batch whose
rows are all gone stops; other rows go on). Each running job is an ongoing Serve request, so Serve's
autoscaler sees the load and graceful shutdown waits for running jobs before a replica goes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from ray import serve
from ray.serve.metrics import Counter, Gauge, Histogram

from jobs.serving.api import FORMATS, Limits
from jobs.serving.families import RequestError, Work, family_of
from jobs.serving.store import JobStore, Overloaded

log = logging.getLogger("phenaki.serve")
REPORT_EVERY_S = 0.1  # progress reports (and cancel checks) to the board, at most this often


class _Stopped(Exception):
    """Every row of the running batch was cancelled or timed out."""


@serve.deployment(name="jobs", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=10_000)
class JobBoard(JobStore):
    """The app's one `JobStore` (one replica: it is the shared record, and cheap)."""

    def __init__(self, limits: dict):
        super().__init__(Limits(**limits))
        self._queue_depth = Gauge("phenaki_queue_depth", description="jobs waiting for a sampler")
        self._jobs_total = Counter(
            "phenaki_jobs_total", description="jobs finished, by status", tag_keys=("status",)
        )

    def create(self, *args, **kwargs) -> dict:
        """The new job's view, or `{"overloaded": detail, "retry_after_s": n}` (returned: the gateway answers
        503 with it, and a value crosses the handle more plainly than an exception)."""
        try:
            view = super().create(*args, **kwargs)
        except Overloaded as e:
            return {"overloaded": str(e), "retry_after_s": e.retry_after_s}
        self._queue_depth.set(self.stats()["queued"])
        return view

    def start(self, ids: list[str], batch_size: int) -> list[str]:
        wanted = super().start(ids, batch_size)
        self._queue_depth.set(self.stats()["queued"])
        return wanted

    def finish(self, job_id: str, *args, **kwargs) -> None:
        super().finish(job_id, *args, **kwargs)
        self._count(job_id)

    def fail(self, job_id: str, code: str, message: str) -> None:
        super().fail(job_id, code, message)
        self._count(job_id)

    def cancel(self, job_id: str, reason: str = "cancelled by the client") -> dict | None:
        view = super().cancel(job_id, reason)
        self._count(job_id)
        self._queue_depth.set(self.stats()["queued"])
        return view

    def _count(self, job_id: str) -> None:
        view = self.get(job_id)
        if view is not None:
            self._jobs_total.inc(tags={"status": view["status"]})


@serve.deployment(
    name="sampler",
    health_check_period_s=10,
    health_check_timeout_s=60,
    graceful_shutdown_wait_loop_s=2,
    graceful_shutdown_timeout_s=300,  # running jobs finish before a replica is replaced
)
class Sampler:
    def __init__(
        self, checkpoint: str, jobs, limits: dict, device: str | None = None, num_threads: int | None = None
    ):
        import torch

        from modeling.generators import load_generator

        if num_threads:
            torch.set_num_threads(num_threads)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.generator = load_generator(checkpoint, device=device)
        self.family = family_of(self.generator)
        self.limits = Limits(**limits)
        self.jobs = jobs  # DeploymentHandle of JobBoard
        self.checkpoint = checkpoint
        self.lock = threading.Lock()  # one sampler call at a time (serve.batch runs one batch at a time too)
        self.busy_since: float | None = None
        self.failure: str | None = None
        self.run.set_max_batch_size(self.limits.max_batch)
        self.run.set_batch_wait_timeout_s(self.limits.batch_wait_s)
        if self.family.takes_text(self.generator):
            self.generator.text_encoder.token_counts(["warm-up"])  # load the encoder now, not on a request
        self._batch_size = Histogram(
            "phenaki_batch_size", description="jobs per sampler call", boundaries=[1, 2, 4, 8, 16, 32]
        )
        self._seconds = Histogram(
            "phenaki_sampling_seconds", description="wall time of one sampler call (incl. decode and encode)",
            boundaries=[0.1, 0.3, 1, 3, 10, 30, 100, 300],
        )  # fmt: skip
        self._steps_per_s = Gauge(
            "phenaki_steps_per_second", description="sampling steps per second, last call"
        )

    # ---- health and facts ----------------------------------------------------------------------------------
    def check_health(self) -> None:
        """Serve calls this every `health_check_period_s`; raising gets the replica replaced."""
        if self.failure:
            raise RuntimeError(self.failure)
        stuck = self.busy_since is not None and time.time() - self.busy_since > self.limits.job_timeout_s + 60
        if stuck:
            raise RuntimeError(f"one sampler call has run {time.time() - self.busy_since:.0f} s")
        first = next(iter(self.family.transformer(self.generator).parameters()))
        if not bool(first.isfinite().all()):
            raise RuntimeError("the model's weights are no longer finite")

    def health(self) -> dict:
        self.check_health()
        return {"status": "ok", "family": self.family.name, "busy": self.busy_since is not None}

    def card(self) -> dict:
        """`jobs.serving.api.ModelCard` fields of the loaded model."""
        from pathlib import Path

        info = self.family.info(self.generator)
        return {
            "id": Path(self.checkpoint).name,
            "family": self.family.name,
            "title": self.generator.title,
            "tasks": info["tasks"],
            "formats": list(FORMATS),
            "limits": self.limits.model_dump(),
            "info": info,
        }

    # ---- requests ------------------------------------------------------------------------------------------
    def prepare(self, request) -> Work | RequestError:
        """A parsed `VideoRequest` -> a `Work` for `run`, or the RequestError to answer with (returned, not
        raised, so the gateway gets the field and status intact)."""
        try:
            return self.family.check(self.generator, request, self.limits)
        except RequestError as e:
            return e

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def run(self, items: list[tuple[str, Work]]) -> list[None]:
        """Sample [(job id, work)]; results, failures and progress go to the board, not back to the caller."""
        groups: dict[tuple, list[tuple[str, Work]]] = {}
        for job_id, work in items:
            groups.setdefault(work.batch_key, []).append((job_id, work))
        for group in groups.values():
            # marked running only now: a job waiting behind another group still reads "queued"
            wanted = set(await self.jobs.start.remote([job_id for job_id, _ in group], len(group)))
            group = [(job_id, work) for job_id, work in group if job_id in wanted]
            if group:
                await asyncio.to_thread(self._sample, group)
        return [None] * len(items)  # the board holds each job's outcome

    def _sample(self, group: list[tuple[str, Work]]) -> None:
        """One sampler call for a group of works (in a thread: the replica's event loop stays free)."""
        from pipelines.media import encode_video

        ids = [job_id for job_id, _ in group]
        live = set(ids)
        steps_done = [0]
        last_report = [0.0]

        def on_step(done: int, total: int) -> None:
            steps_done[0] = done
            # Ask the board at most every REPORT_EVERY_S (and at the end): a tiny model takes a few ms a step,
            # and a cancel then lands within a tenth of a second anyway.
            now = time.monotonic()
            if now - last_report[0] < REPORT_EVERY_S and done < total:
                return
            last_report[0] = now
            stopped = self.jobs.step.remote(sorted(live), done / total).result()
            live.difference_update(stopped)
            if not live:
                raise _Stopped

        self.busy_since = start = time.time()
        try:
            with self.lock:
                outputs = self.family.run(self.generator, [w for _, w in group], on_step)
            for (job_id, work), out in zip(group, outputs, strict=True):
                if job_id not in live:
                    continue
                content, media_type = encode_video(out.frames, out.fps, work.fmt)
                stem = f"{self.family.name}-{out.task}" if out.task else self.family.name
                facts = {
                    "frames": len(out.frames), "fps": out.fps, "segments": out.segments, "task": out.task,
                    "kept_fraction": out.kept_fraction,
                }  # fmt: skip
                self.jobs.finish.remote(
                    job_id, content, media_type, f"{stem}-{work.seed}.{work.fmt}", facts
                ).result()
            seconds = time.time() - start
            self._batch_size.observe(len(group))
            self._seconds.observe(seconds)
            self._steps_per_s.set(steps_done[0] / max(seconds, 1e-9))
        except _Stopped:
            log.info("batch of %d stopped: every job was cancelled or timed out", len(group))
        except Exception as e:  # noqa: BLE001 - a failed call fails its jobs, with the reason, not the replica
            log.exception("sampling failed")
            for job_id in ids:
                self.jobs.fail.remote(
                    job_id, "internal", f"sampling failed: {type(e).__name__}: {e}"
                ).result()
            if "CUDA" in str(e):  # a device fault poisons the replica: let Serve replace it
                self.failure = f"device fault: {e}"
        finally:
            self.busy_since = None
