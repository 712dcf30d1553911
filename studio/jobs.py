"""The one queue in front of the engine, shared by the UI and the A1111 API: what runs now, its progress, Stop.

Every generation (a UI tab's Generate, an `/sdapi/v1/txt2img` call) and every model switch made through the API runs
as a `Job` of the studio's `JobTracker`: jobs wait their turn in arrival order, one runs at a time, and while it
runs the tracker knows its step counts. That is what `/sdapi/v1/progress` reports (whichever job runs, UI or
API) and what `/sdapi/v1/interrupt` stops between steps; a UI session's Stop finds its own job the same way.

While a job samples, the engine may show how its image is forming (studio.engine.LivePreview): every
`preview_every` steps (the tracker's setting, 0 = off) the job keeps the latest preview picture, which the UI shows
and `/sdapi/v1/progress` returns as `current_image`.

A job may run several batches (A1111's `n_iter`): `start_batch(no)` moves to the next one. `skip()` stops only
the current batch (A1111's Skip); `interrupt()` stops the whole job. The job's `cancel` token is what the engine
polls between steps (studio.engine.CancelToken).

Only the standard library is used: the UI and the serving app import this without torch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from studio.engine import GenerationCancelled, LivePreview, ProgressCallback

# How often a job waiting for its turn checks whether it was stopped meanwhile.
_WAIT_POLL_SECONDS = 0.1


class _CancelToken:
    """What the engine polls between steps: set when the job is interrupted or its current batch skipped."""

    def __init__(self, job: Job):
        self._job = job

    def is_set(self) -> bool:
        return self._job.interrupted or self._job.skip_requested


@dataclass
class Job:
    """One queued or running unit of work. Times are time.monotonic() values; `timestamp` is A1111's job_timestamp."""

    name: str  # A1111's "job" ("txt2img", "img2img", "load model", ...)
    session: str = ""  # the UI session (or API caller) that owns it: a UI Stop stops only its own job
    job_count: int = 1  # batches (A1111's n_iter)
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0
    interrupted: bool = False
    skipped: bool = False  # a batch of this job was skipped
    skip_requested: bool = False  # the current batch should stop (reset by start_batch)
    textinfo: str | None = None
    preview_every: int = 0  # live previews every N sampling steps (0: none)
    preview: Any = None  # the latest live preview (a PIL image) of the running batch, or None
    preview_step: int = 0  # the step it shows
    queued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    timestamp: str = field(default_factory=lambda: time.strftime("%Y%m%d%H%M%S"))

    def __post_init__(self) -> None:
        self.cancel = _CancelToken(self)

    @property
    def running(self) -> bool:
        return self.started_at is not None

    def interrupt(self) -> None:
        self.interrupted = True

    def skip(self) -> None:
        self.skip_requested = True
        self.skipped = True

    def start_batch(self, number: int) -> None:
        """Move to batch `number` (0-based): step counts restart and a skip of the previous batch is spent."""
        self.job_no = number
        self.sampling_step = 0
        self.skip_requested = False
        self.preview, self.preview_step = None, 0

    def on_progress(self, forward: ProgressCallback | None = None) -> ProgressCallback:
        """The engine's progress callback for this job, also calling `forward` (e.g. the UI's progress bar)."""

        def report(step: int, total: int) -> None:
            self.sampling_step, self.sampling_steps = step, total
            if forward is not None:
                forward(step, total)

        return report

    def live_preview(self) -> LivePreview | None:
        """What the engine gets to show this job's image forming (None when previews are off)."""
        if self.preview_every <= 0:
            return None

        def show(image: Any, step: int, _total: int) -> None:
            self.preview, self.preview_step = image, step

        return LivePreview(every=self.preview_every, show=show)

    def progress(self) -> float:
        """0..1 over the whole job, counting finished batches (A1111's formula)."""
        if self.job_count <= 0:
            return 0.0
        done = self.job_no / self.job_count
        if self.sampling_steps > 0:
            done += self.sampling_step / self.sampling_steps / self.job_count
        return min(max(done, 0.0), 1.0)


class JobTracker:
    """Runs jobs one at a time in arrival order and reports the running one (see the module docstring)."""

    def __init__(self, preview_every: int = 0) -> None:
        self.preview_every = preview_every  # live previews of the jobs that start from now on (0: off)
        self._lock = threading.Condition()
        self._queue: list[Job] = []  # waiting and running, oldest first; the head runs
        self._current: Job | None = None

    @contextmanager
    def run(self, name: str, *, session: str = "", job_count: int = 1) -> Iterator[Job]:
        """Wait for this job's turn, then hold the engine until the block ends.

        A job stopped while it waits (its session's Stop, or an interrupt) raises GenerationCancelled before it
        starts.
        """
        job = Job(name=name, session=session, job_count=max(1, job_count), preview_every=max(0, self.preview_every))
        with self._lock:
            self._queue.append(job)
            while self._queue[0] is not job or self._current is not None:
                if job.interrupted:
                    self._queue.remove(job)
                    self._lock.notify_all()
                    raise GenerationCancelled("stopped before it started (it was waiting for the engine)")
                self._lock.wait(_WAIT_POLL_SECONDS)
            job.started_at = time.monotonic()
            self._current = job
        try:
            yield job
        finally:
            with self._lock:
                self._queue.remove(job)
                self._current = None
                self._lock.notify_all()

    def current(self) -> Job | None:
        with self._lock:
            return self._current

    def preview(self, session: str | None = None) -> tuple[Any, int] | None:
        """The running job's latest live preview and its step (only if the job belongs to `session`, when given);
        None when nothing runs or no preview exists yet."""
        with self._lock:
            job = self._current
        if job is None or (session is not None and job.session != session):
            return None
        image, step = job.preview, job.preview_step
        return None if image is None else (image, step)

    def waiting(self) -> int:
        """How many jobs wait behind the running one."""
        with self._lock:
            return len(self._queue) - (1 if self._current is not None else 0)

    def interrupt(self, session: str | None = None) -> bool:
        """Stop the running job (`session` None), or the job of `session` whether it runs or waits. False when
        there was none."""
        with self._lock:
            if session is None:
                job = self._current
            else:
                job = next((j for j in reversed(self._queue) if j.session == session), None)
            if job is None:
                return False
            job.interrupt()
            self._lock.notify_all()
            return True

    def skip(self) -> bool:
        """Stop the current batch of the running job; the job goes on with its next batch. False when idle."""
        with self._lock:
            if self._current is None:
                return False
            self._current.skip()
            return True

    def progress(self) -> dict[str, Any]:
        """The running job in the shape of A1111's `/sdapi/v1/progress` (without current_image); idle: progress 0,
        job_count 0."""
        with self._lock:
            job = self._current
            if job is None:
                return {
                    "progress": 0.0,
                    "eta_relative": 0.0,
                    "state": _idle_state(),
                    "textinfo": None,
                }
            progress = job.progress()
            elapsed = time.monotonic() - (job.started_at or job.queued_at)
            eta = elapsed / progress - elapsed if progress > 0 else 0.0
            return {
                "progress": round(progress, 4),
                "eta_relative": round(max(eta, 0.0), 3),
                "state": {
                    "skipped": job.skipped,
                    "interrupted": job.interrupted,
                    "stopping_generation": False,
                    "job": job.name,
                    "job_count": job.job_count,
                    "job_timestamp": job.timestamp,
                    "job_no": job.job_no,
                    "sampling_step": job.sampling_step,
                    "sampling_steps": job.sampling_steps,
                },
                "textinfo": job.textinfo,
            }


def _idle_state() -> dict[str, Any]:
    return {
        "skipped": False,
        "interrupted": False,
        "stopping_generation": False,
        "job": "",
        "job_count": 0,
        "job_timestamp": "0",
        "job_no": 0,
        "sampling_step": 0,
        "sampling_steps": 0,
    }
