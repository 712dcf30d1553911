"""A zygote for bench workers: one interpreter imports torch, diffusers, transformers and the studio once, then
forks a child per worker task (`python -m bench.zygote`, driven by `Zygote` in the coordinating process).

Every worker of a run used to start a new interpreter and spend ~5 s importing the same libraries before measuring
anything; a quick run has ten of them. A child forked from the zygote starts where a fresh worker stands after its
imports: no model loaded, no thread pool started (importing torch starts none), its own address space (its peak
RSS counter starts at the RSS it inherits, which is what the imports would have cost it), and it exits when its
task ends. OpenVINO is not preloaded: its runtime starts threads, which do not survive a fork.
`python -m bench --fresh-workers` starts a new interpreter per worker instead.

Protocol (one JSON object per line): the coordinator writes {"task", "args", "stdout", "stderr"} (file paths for
the child's output; "stderr" null keeps the zygote's own); the zygote forks, answers {"pid"}, waits for the child
and answers {"pid", "code"}. One task at a time. EOF on stdin ends the zygote.
"""

from __future__ import annotations

import importlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

PAGE = os.sysconf("SC_PAGE_SIZE")
PRELOAD = ("torch", "diffusers", "transformers", "studio.engines.local", "studio.models", "bench.workers")


def _reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _redirect(fd: int, path: str | None, flags: int) -> None:
    if path is None:
        return
    target = os.open(path, flags, 0o644)
    os.dup2(target, fd)
    os.close(target)


def _present_pages(pagemap: int, start: int, end: int) -> Any:
    """Addresses of the pages in [start, end) that a /proc/PID/pagemap descriptor shows present."""
    import numpy as np

    entries = np.frombuffer(os.pread(pagemap, (end - start) // PAGE * 8, start // PAGE * 8), dtype="<u8")
    return start + np.flatnonzero(entries >> np.uint64(63)) * PAGE


def fault_in_like(parent: int) -> int:
    """Touch every page that process `parent` has resident and this (forked) process has not; the count touched.

    A fork copies the page-table entries of anonymous memory but leaves file-backed pages (the libraries' code and
    data) to fault in on first use, so a child's RSS would start ~100 MB below a fresh worker's after the same
    imports. Reading one byte of each such page makes the child's RSS, and so its peak, start where a fresh
    worker's does. The reads go through /proc/self/mem, which faults the page in like a load would, but answers
    a page that cannot be read (a truncated file, a range that changed) with an error instead of a crash.
    """
    touched = 0
    with open(f"/proc/{os.getpid()}/maps") as maps:
        ranges = [line.split() for line in maps]
    theirs, ours = os.open(f"/proc/{parent}/pagemap", os.O_RDONLY), os.open("/proc/self/pagemap", os.O_RDONLY)
    memory = os.open("/proc/self/mem", os.O_RDONLY)
    try:
        for fields in ranges:
            if "r" not in fields[1] or (len(fields) > 5 and fields[5].startswith("[v")):  # [vvar], [vdso]...
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            missing = set(_present_pages(theirs, start, end).tolist()) - set(_present_pages(ours, start, end).tolist())
            for address in missing:
                try:
                    os.pread(memory, 1, address)
                except OSError:
                    continue
                touched += 1
    finally:
        for fd in (theirs, ours, memory):
            os.close(fd)
    return touched


def _serve_until_forked() -> dict[str, Any] | None:
    """The zygote's loop: fork one child per request. Returns the request in the child, None in the zygote at EOF."""
    for line in sys.stdin:
        request = json.loads(line)
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            fault_in_like(os.getppid())
            _redirect(0, os.devnull, os.O_RDONLY)  # the request pipe belongs to the zygote
            _redirect(1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            _redirect(2, request.get("stderr"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            return request
        _reply({"pid": pid})
        _, status = os.waitpid(pid, 0)
        _reply({"pid": pid, "code": os.waitstatus_to_exitcode(status)})
    return None


def main() -> int:
    for name in PRELOAD:
        importlib.import_module(name)
    _reply({"ready": True, "pid": os.getpid()})
    request = _serve_until_forked()
    if request is None:
        return 0
    # The child: sys.stdout/stderr now write to the redirected descriptors.
    from bench import workers

    return workers.main([request["task"], json.dumps(request["args"])])


class ZygoteError(RuntimeError):
    """The zygote process died or never became ready."""


class Zygote:
    """The coordinator's handle: start `python -m bench.zygote`, run tasks in its forked children, close it."""

    def __init__(self, env: dict[str, str], cwd: Path, *, verbose: bool = False, start_timeout: float = 300.0) -> None:
        self.verbose = verbose
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.zygote"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None if verbose else subprocess.DEVNULL,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True, name="bench-zygote-reader").start()
        self.pid = int(self._next(start_timeout, "ready")["pid"])

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _next(self, timeout: float, what: str) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=max(timeout, 0.001))
        except queue.Empty:
            raise TimeoutError(what) from None
        if line is None:
            raise ZygoteError(f"the bench zygote exited (code {self._proc.poll()}) while waiting for {what}")
        return json.loads(line)

    def run(self, task: str, args: dict[str, Any], stdout: Path, stderr: Path | None, timeout: float) -> int:
        """Run `task` in a forked child writing to `stdout` / `stderr`; its exit code. TimeoutError: it was killed."""
        assert self._proc.stdin is not None
        request = {"task": task, "args": args, "stdout": str(stdout), "stderr": None if stderr is None else str(stderr)}
        deadline = time.monotonic() + timeout
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        pid = self._next(30.0, f"{task} to start")["pid"]
        try:
            return int(self._next(deadline - time.monotonic(), task)["code"])
        except TimeoutError:
            os.kill(pid, 9)
            self._next(30.0, f"{task} to be killed")
            raise

    def close(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


if __name__ == "__main__":
    sys.exit(main())
