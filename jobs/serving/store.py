"""The job board of `phenaki serve`: every job's status, progress, timings and finished video, shared by all
replicas of the app (it runs as its own one-replica deployment, `jobs.serving.app`), bounded in time and size.

Any ingress replica may answer `GET /v1/videos/{id}` for a job another one took, and any sampler replica may
run it, so the record lives here rather than in a replica. The sampler reports each step (`step`) and learns
which of its rows were cancelled or ran out of time, which is how `DELETE`, a disconnected client and
`job_timeout_s` stop work at the next sampling step. Finished jobs are kept `result_ttl_s`; past
`max_result_bytes` the oldest videos are dropped first (their record says so). Admission is here too: more
than `max_queued` waiting jobs and `create` refuses (the ingress answers 503 with Retry-After).

Pure Python and thread-safe; nothing here imports Ray.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

from jobs.serving.api import FINISHED, Limits

RUNNING_PROGRESS_CAP = 0.99  # the most progress a job shows before its video is stored


class Overloaded(RuntimeError):
    """Too many jobs waiting; `retry_after_s` is a fair guess of when to try again."""

    def __init__(self, queued: int, retry_after_s: int):
        super().__init__(f"{queued} jobs are waiting (the limit); try again in {retry_after_s} s")
        self.retry_after_s = retry_after_s


@dataclass
class _Record:
    view: dict  # the `jobs.serving.api.Job` fields
    deadline: float
    content: bytes | None = None
    media_type: str = ""
    filename: str = ""


class JobStore:
    def __init__(self, limits: Limits | dict | None = None, clock=time.time):
        self.limits = limits if isinstance(limits, Limits) else Limits(**(limits or {}))
        self.clock = clock
        self._jobs: OrderedDict[str, _Record] = OrderedDict()  # oldest first
        self._lock = threading.Lock()
        self._run_seconds: list[float] = []  # recent jobs' sampling time, for Retry-After

    # ---- submit --------------------------------------------------------------------------------------------
    def create(
        self, family: str, fmt: str, seed: int, prompts: list[str], warnings: list[str], task=None
    ) -> dict:
        """A new queued job -> its view; Overloaded when `max_queued` jobs already wait."""
        with self._lock:
            now = self.clock()
            self._sweep(now)
            queued = sum(r.view["status"] == "queued" for r in self._jobs.values())
            if queued >= self.limits.max_queued:
                raise Overloaded(queued, self._retry_after(queued))
            job_id = uuid.uuid4().hex
            view = {
                "id": job_id, "status": "queued", "progress": 0.0, "family": family, "format": fmt,
                "seed": seed, "prompts": list(prompts), "warnings": list(warnings), "created_at": now,
                "task": task,
            }  # fmt: skip
            self._jobs[job_id] = _Record(view, deadline=now + self.limits.job_timeout_s)
            return dict(view)

    def overloaded(self) -> dict | None:
        """`{"overloaded": detail, "retry_after_s": n}` when `max_queued` jobs wait, else None: the gateway asks
        before checking a request, so a refusal costs one round trip however busy the samplers are."""
        with self._lock:
            self._sweep(self.clock())
            queued = sum(r.view["status"] == "queued" for r in self._jobs.values())
            if queued < self.limits.max_queued:
                return None
            e = Overloaded(queued, self._retry_after(queued))
            return {"overloaded": str(e), "retry_after_s": e.retry_after_s}

    def _retry_after(self, queued: int) -> int:
        typical = sorted(self._run_seconds)[len(self._run_seconds) // 2] if self._run_seconds else 5.0
        return max(1, min(600, round(typical * queued / max(1, self.limits.max_batch))))

    # ---- the sampler's side --------------------------------------------------------------------------------
    def start(self, ids: list[str], batch_size: int) -> list[str]:
        """Mark the still-wanted of `ids` running (a batch of `batch_size`) -> those ids; the others were
        cancelled, expired or timed out while queued and must not run."""
        with self._lock:
            now = self.clock()
            wanted = []
            for job_id in ids:
                rec = self._jobs.get(job_id)
                if rec is None or rec.view["status"] != "queued" or self._timed_out(rec, now):
                    continue
                rec.view.update(
                    status="running", started_at=now, queue_seconds=now - rec.view["created_at"],
                    batch_size=batch_size,
                )  # fmt: skip
                wanted.append(job_id)
            return wanted

    def step(self, ids: list[str], progress: float) -> list[str]:
        """Progress (0-1) of the running `ids` -> the ids no longer wanted (cancelled, or past their deadline:
        those are failed with a timeout here)."""
        with self._lock:
            now = self.clock()
            stopped = []
            for job_id in ids:
                rec = self._jobs.get(job_id)
                if rec is None or rec.view["status"] != "running" or self._timed_out(rec, now):
                    stopped.append(job_id)
                else:
                    # 1.0 is kept for "the video is ready": the last sampling step still leaves the decode and
                    # the encode to run, and a client that sees 1.0 while it waits would think it stalled.
                    rec.view["progress"] = max(
                        rec.view["progress"], min(RUNNING_PROGRESS_CAP, float(progress))
                    )
                    rec.view["run_seconds"] = now - rec.view["started_at"]  # so far
            return stopped

    def _timed_out(self, rec: _Record, now: float) -> bool:
        if now <= rec.deadline or rec.view["status"] in FINISHED:
            return False
        self._end(rec, now, "failed", {"code": "timeout", "message": f"not done within the job timeout "
                                       f"({self.limits.job_timeout_s:g} s); try fewer steps or segments"})  # fmt: skip
        return True

    def finish(self, job_id: str, content: bytes, media_type: str, filename: str, facts: dict) -> None:
        """Store a finished video and its facts (frames, fps, segments, ...); a job cancelled meanwhile stays
        cancelled and its video is dropped."""
        with self._lock:
            rec = self._jobs.get(job_id)
            if rec is None or rec.view["status"] in FINISHED:
                return
            now = self.clock()
            rec.content, rec.media_type, rec.filename = content, media_type, filename
            rec.view.update(
                facts, progress=1.0, bytes=len(content), result_url=f"/v1/videos/{job_id}/content"
            )
            self._end(rec, now, "succeeded")
            self._run_seconds = (self._run_seconds + [rec.view.get("run_seconds", 0.0)])[-32:]
            self._jobs.move_to_end(job_id)
            self._sweep(now)

    def fail(self, job_id: str, code: str, message: str) -> None:
        with self._lock:
            rec = self._jobs.get(job_id)
            if rec is not None and rec.view["status"] not in FINISHED:
                self._end(rec, self.clock(), "failed", {"code": code, "message": message})

    def _end(self, rec: _Record, now: float, status: str, error: dict | None = None) -> None:
        started = rec.view.get("started_at")
        rec.view.update(status=status, finished_at=now, error=error)
        if started is not None:
            rec.view["run_seconds"] = now - started
        rec.deadline = now + self.limits.result_ttl_s  # from now on: when the record is removed

    # ---- the client's side ---------------------------------------------------------------------------------
    def cancel(self, job_id: str, reason: str = "cancelled by the client") -> dict | None:
        """Cancel a queued or running job (the sampler stops it at its next step) -> its view; a finished job
        is left as it is. None: no such job."""
        with self._lock:
            rec = self._jobs.get(job_id)
            if rec is None:
                return None
            if rec.view["status"] not in FINISHED:
                self._end(rec, self.clock(), "cancelled", {"code": "cancelled", "message": reason})
            return dict(rec.view)

    def get(self, job_id: str) -> dict | None:
        with self._lock:
            self._sweep(self.clock())
            rec = self._jobs.get(job_id)
            return None if rec is None else dict(rec.view)

    def content(self, job_id: str) -> tuple[bytes, str, str] | None:
        """(video bytes, media type, file name) of a succeeded job whose video is still kept, else None."""
        with self._lock:
            rec = self._jobs.get(job_id)
            if rec is None or rec.content is None:
                return None
            return rec.content, rec.media_type, rec.filename

    def stats(self) -> dict:
        """Counts by status, the queue depth and the bytes of video kept (the server's metrics read these)."""
        with self._lock:
            self._sweep(self.clock())
            counts: dict[str, int] = {}
            for rec in self._jobs.values():
                counts[rec.view["status"]] = counts.get(rec.view["status"], 0) + 1
            return {
                "jobs": counts,
                "queued": counts.get("queued", 0),
                "running": counts.get("running", 0),
                "result_bytes": sum(len(r.content) for r in self._jobs.values() if r.content is not None),
            }

    # ---- bounds --------------------------------------------------------------------------------------------
    def _sweep(self, now: float) -> None:
        """Forget finished jobs past their TTL; drop the oldest videos beyond `max_result_bytes`; fail
        unfinished jobs past their deadline."""
        for job_id, rec in list(self._jobs.items()):
            if rec.view["status"] in FINISHED and now > rec.deadline:
                del self._jobs[job_id]
            else:
                self._timed_out(rec, now)
        kept = sum(len(r.content) for r in self._jobs.values() if r.content is not None)
        for rec in self._jobs.values():  # oldest finished first
            if kept <= self.limits.max_result_bytes:
                break
            if rec.content is not None:
                kept -= len(rec.content)
                rec.content = None
                rec.view.update(result_url=None, error={"code": "expired", "message": "the video was dropped "
                                "to keep the server's result store under its size limit; generate it again"})  # fmt: skip
