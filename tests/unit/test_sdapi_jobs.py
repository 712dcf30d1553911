"""studio.jobs: one queue for the UI's and the API's jobs, A1111's progress shape, interrupt and skip."""

from __future__ import annotations

import threading
import time

import pytest

from studio.engine import GenerationCancelled
from studio.jobs import JobTracker


def test_idle_progress_is_what_clients_wait_for():
    state = JobTracker().progress()
    assert state["progress"] == 0 and state["state"]["job_count"] == 0 and state["textinfo"] is None


def test_progress_of_the_running_job_counts_batches():
    tracker = JobTracker()
    with tracker.run("txt2img", job_count=2) as job:
        job.start_batch(1)
        job.on_progress()(5, 10)
        state = tracker.progress()
    assert state["state"]["job"] == "txt2img" and state["state"]["job_count"] == 2 and state["state"]["job_no"] == 1
    assert state["state"]["sampling_step"] == 5 and state["state"]["sampling_steps"] == 10
    assert state["progress"] == pytest.approx(0.75)
    assert tracker.progress()["state"]["job_count"] == 0  # done: idle again


def test_jobs_run_one_at_a_time_in_arrival_order():
    tracker = JobTracker()
    order: list[str] = []
    gate = threading.Event()

    def worker(name: str) -> None:
        with tracker.run(name):
            order.append(name)
            gate.wait(2)

    first = threading.Thread(target=worker, args=("a",))
    first.start()
    while tracker.current() is None:
        time.sleep(0.01)
    second = threading.Thread(target=worker, args=("b",))
    second.start()
    time.sleep(0.2)
    assert order == ["a"] and tracker.waiting() == 1
    gate.set()
    first.join(5)
    second.join(5)
    assert order == ["a", "b"]


def test_interrupt_stops_the_running_job_and_a_session_can_stop_its_waiting_job():
    tracker = JobTracker()
    assert tracker.interrupt() is False and tracker.skip() is False
    release = threading.Event()
    errors: list[Exception] = []

    def waiting() -> None:
        try:
            with tracker.run("img2img", session="browser-2"):
                pass
        except GenerationCancelled as exc:
            errors.append(exc)

    with tracker.run("txt2img", session="browser-1") as job:
        thread = threading.Thread(target=waiting)
        thread.start()
        while tracker.waiting() == 0:
            time.sleep(0.01)
        assert tracker.interrupt("browser-2") is True  # its own Stop, while it waits
        thread.join(5)
        assert errors and "before it started" in str(errors[0])
        assert not job.cancel.is_set()
        assert tracker.interrupt() is True
        assert job.cancel.is_set() and tracker.progress()["state"]["interrupted"] is True
        release.set()


def test_skip_stops_only_the_current_batch():
    tracker = JobTracker()
    with tracker.run("txt2img", job_count=2) as job:
        assert tracker.skip() is True
        assert job.cancel.is_set() and job.skipped
        job.start_batch(1)
        assert not job.cancel.is_set() and tracker.progress()["state"]["skipped"] is True


def test_live_previews_belong_to_the_running_job_of_their_session():
    from PIL import Image

    tracker = JobTracker(preview_every=3)
    assert tracker.preview() is None
    with tracker.run("txt2img", session="browser-a") as job:
        preview = job.live_preview()
        assert preview is not None and preview.every == 3
        assert tracker.preview() is None  # nothing shown yet
        picture = Image.new("RGB", (8, 8), (200, 10, 10))
        preview.show(picture, 3, 9)
        assert tracker.preview() == (picture, 3) and tracker.preview("browser-a") == (picture, 3)
        assert tracker.preview("browser-b") is None  # another browser sees nothing of it
        job.start_batch(1)
        assert tracker.preview() is None  # a new batch starts without the old picture
    assert tracker.preview() is None  # done


def test_turning_previews_off_applies_to_the_next_job():
    tracker = JobTracker(preview_every=2)
    with tracker.run("txt2img") as job:
        tracker.preview_every = 0
        assert job.live_preview() is not None  # the running job keeps its setting
    with tracker.run("txt2img") as job:
        assert job.live_preview() is None
