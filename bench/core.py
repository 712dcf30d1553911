"""Timing, memory, goal and worker helpers shared by the benchmark sections.

Why medians of interleaved runs: this benchmark runs on shared 2-core machines. Timing A five times and then B five
times turns a neighbour's burst into a false ratio; alternating A B / B A each round exposes both to the same noise,
so it shows up as spread (reported as min/max and quartiles) instead.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
RESULT_PREFIX = "BENCH_RESULT "  # a worker prints its JSON result on one stdout line starting with this


# ---------------------------------------------------------------------------------------------------------------------
# Statistics


@dataclass(frozen=True)
class Stats:
    """Summary of repeated measurements: median with min/max and the quartiles (p25/p75)."""

    n: int
    median: float
    min: float
    max: float
    p25: float
    p75: float

    @classmethod
    def of(cls, values: list[float]) -> Stats:
        if not values:
            raise ValueError("no measurements")
        ordered = sorted(values)
        if len(ordered) >= 2:
            q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
        else:
            q1 = q3 = ordered[0]
        return cls(len(ordered), statistics.median(ordered), ordered[0], ordered[-1], q1, q3)

    def as_dict(self, scale: float = 1.0, digits: int = 4) -> dict[str, float]:
        """The stats as a dict, multiplied by `scale` (e.g. 1000 for ms) and rounded."""
        return {k: (v if k == "n" else round(v * scale, digits)) for k, v in asdict(self).items()}


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (p50, p95) of `values`, the convention load-test tools report."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no measurements")
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5 - 1e-9)))
    return ordered[rank - 1]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def interleave(runs: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Time each callable `rounds` times, alternating the order every round (A B, B A, A B, ...).

    Each callable first runs `warmup` times untimed (lazy imports, allocator and thread-pool warm-up, caches).
    Returns the seconds per run for each name.
    """
    names = list(runs)
    for _ in range(warmup):
        for name in names:
            runs[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        order = names if index % 2 == 0 else list(reversed(names))
        for name in order:
            seconds, _ = timed(runs[name])
            times[name].append(seconds)
        logger.debug("round %d: %s", index + 1, {n: round(t[-1], 3) for n, t in times.items()})
    return times


def ratio_summary(numerator: list[float], denominator: list[float]) -> dict[str, float]:
    """Ratio A/B of interleaved measurements.

    `ratio` is the median of the per-round ratios: the two runs of a round are adjacent in time and share the
    machine's state, so a neighbour's burst spoils one round, not the figure (a ratio of medians can be skewed
    by bursts that hit A and B in different rounds; it is reported too). The spread is the per-round min/max.
    """
    per_round = [a / b for a, b in zip(numerator, denominator, strict=True) if b > 0]
    return {
        "ratio": round(statistics.median(per_round), 4),
        "ratio_of_medians": round(statistics.median(numerator) / statistics.median(denominator), 4),
        "ratio_of_mins": round(min(numerator) / min(denominator), 4),
        "round_ratio_min": round(min(per_round), 4),
        "round_ratio_max": round(max(per_round), 4),
    }


def speedup_fields(slow: list[float], fast: list[float], name: str = "speedup") -> dict[str, float]:
    """`ratio_summary(slow, fast)` as speedup fields: `<name>`, `<name>_of_medians` and the per-round spread
    `round_speedup_min` / `round_speedup_max`."""
    ratios = ratio_summary(slow, fast)
    return {
        name: ratios["ratio"],
        f"{name}_of_medians": ratios["ratio_of_medians"],
        "round_speedup_min": ratios["round_ratio_min"],
        "round_speedup_max": ratios["round_ratio_max"],
    }


# ---------------------------------------------------------------------------------------------------------------------
# Memory (Linux /proc; the benchmark targets Linux hosts and containers)


def _status_kb(field: str, pid: int | None = None) -> int | None:
    path = Path(f"/proc/{pid or 'self'}/status")
    try:
        for line in path.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_mb(pid: int | None = None) -> float | None:
    """Resident set size of `pid` (default: this process) in MB."""
    kb = _status_kb("VmRSS", pid)
    return None if kb is None else round(kb / 1024, 1)


def peak_rss_mb(pid: int | None = None) -> float | None:
    """Peak resident set size (VmHWM) of `pid` (default: this process) in MB."""
    kb = _status_kb("VmHWM", pid)
    if kb is None and pid is None:
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return None if kb is None else round(kb / 1024, 1)


class AnonPeak:
    """The peak anonymous RSS (RssAnon: heap and compiled weights, not file pages the kernel can drop) of this
    process while the block runs, sampled every `interval` s by a thread: `with AnonPeak() as peak: ...; peak.mb`.
    VmHWM counts mapped model files too (OpenVINO maps its IR; safetensors are mapped by torch)."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.mb: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            kb = _status_kb("RssAnon")
            if kb is not None:
                self.mb = max(self.mb or 0.0, round(kb / 1024, 1))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU, core count, load, library versions."""
    import platform

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_avg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
        flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
        info["cpu"] = names[0] if names else None
        info["cpu_bf16"] = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
        mem = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
        info["mem_gb"] = round(int(mem.split()[1]) / 1024 / 1024, 1)
    except (OSError, StopIteration, IndexError):
        pass
    from importlib import metadata

    versions = {}
    for package in ("torch", "diffusers", "transformers", "openvino", "gradio", "fastapi", "uvicorn"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    info["versions"] = versions
    return info


# ---------------------------------------------------------------------------------------------------------------------
# Goals


@dataclass(frozen=True)
class Goal:
    """A target for one result field (dotted path into the result JSON)."""

    field: str
    op: str  # "<=", ">=", "=="
    target: float
    why: str

    def met(self, value: Any) -> bool | None:
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if self.op == "<=":
            return value <= self.target
        if self.op == ">=":
            return value >= self.target
        return value == self.target

    @property
    def text(self) -> str:
        return f"{self.op} {self.target:g}"


GOALS: tuple[Goal, ...] = (
    Goal("engine_vs_raw.ratio", "<=", 1.03, "the studio adds at most 3 % to a raw diffusers call"),
    Goal("serving_overhead_ms_512", "<=", 60, "/invocations adds at most 60 ms per 512x512 image"),
    Goal("task_switch.reloads", "==", 0, "txt2img -> img2img -> inpaint never reloads weights"),
    Goal("task_switch.rss_increase_pct", "<=", 5, "switching tasks grows RSS by at most 5 %"),
    Goal("openvino_vs_torch.speedup", ">=", 2.0, "OpenVINO per-step time at least 2x faster than torch on CPU"),
    Goal("gpu.speedup", ">=", 1.2, "studio fast settings at least 1.2x plain diffusers fp16 (GPU only)"),
    Goal("a1111.overhead_pct", "<=", 5, "prompt weighting + one LoRA cost at most 5 % over a plain prompt"),
    Goal("a1111.lora_rss_growth_pct", "<=", 5, "cycling 3 LoRAs and none grows RSS by at most 5 % after one cycle"),
    Goal("preview_overhead_pct", "<=", 3, "live previews at the default interval cost at most 3 % of generation time"),
    Goal(
        "openvino_vs_torch.unet_peak_fraction_512",
        ">=",
        0.6,
        "the OpenVINO UNet step at 512x512 reaches at least 60 % of the machine's bf16 matmul peak",
    ),
    Goal(
        "openvino_vs_torch.e2e_512.fixed_steps",
        "<=",
        2,
        "text encoding + VAE decode + overhead of a 512x512 image cost at most two OpenVINO UNet steps",
    ),
    Goal("openvino_vs_torch.e2e_512.speedup_20", ">=", 5, "a 20-step 512x512 image at least 5x torch (AMX CPUs)"),
    Goal(
        "openvino_vs_torch.warm_load_rss_fraction",
        "<=",
        0.5,
        "load + first image from a warm IR cache peaks at most at half the torch engine's RSS",
    ),
    Goal(
        "openvino_vs_torch.warm_load_time_fraction",
        "<=",
        1.0,
        "load + first image from a warm IR cache takes no longer than the torch engine's",
    ),
    Goal("openvino_vs_torch.cold_convert_peak_rss_mb", "<=", 6144, "a first (cold) conversion peaks at most at 6 GB"),
    # Against optimum-intel (bench.peer; only where its venv exists): the default engine, warm caches on both sides.
    Goal("peer.per_step.auto.ratio", "<=", 1.0, "a 512x512 UNet step takes at most the peer's static pipeline's"),
    Goal("peer.first_image.auto.ratio_20_steps", "<=", 1.0, "a 20-step 512x512 image takes at most the peer's"),
    Goal("peer.first_image.auto.ratio_time_to_first_image", "<=", 1.0, "start + first image no slower than the peer's"),
)

# Fields every result file has (null when the section did not run), so consumers can rely on them.
CONTRACT_FIELDS = (
    "engine_vs_raw.ratio",
    "serving_overhead_ms_512",
    "task_switch.reloads",
    "task_switch.rss_increase_pct",
    "openvino_vs_torch.speedup",
    "a1111.overhead_pct",
    "a1111.lora_rss_growth_pct",
    "preview_overhead_pct",
    "machine.bf16_matmul_tflops",
    "openvino_vs_torch.unet_tflop_512",
    "openvino_vs_torch.unet_peak_fraction_512",
    "openvino_vs_torch.e2e_512.fixed_steps",
    "openvino_vs_torch.e2e_512.speedup_20",
    "openvino_vs_torch.warm_load_rss_fraction",
    "openvino_vs_torch.warm_load_time_fraction",
    "openvino_vs_torch.cold_convert_peak_rss_mb",
    "peer.per_step.auto.ratio",
    "peer.first_image.auto.ratio_20_steps",
    "peer.first_image.auto.ratio_time_to_first_image",
)


def get_path(data: dict[str, Any], dotted: str) -> Any:
    """`data["a"]["b"][0]` for "a.b.0" (dict keys and list indices), or None when any step is missing."""
    node: Any = data
    for part in dotted.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def set_default_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `dotted` to `value` unless it exists (creating the parent dicts)."""
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node.setdefault(parts[-1], value)


def evaluate_goals(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{field: {goal, value, met, why}} for every goal whose section produced a value (or ran and failed)."""
    out: dict[str, dict[str, Any]] = {}
    for goal in GOALS:
        value = get_path(results, goal.field)
        if value is None and goal.field.startswith("gpu."):
            continue  # the GPU goal only exists on GPU hosts
        out[goal.field] = {"goal": goal.text, "value": value, "met": goal.met(value), "why": goal.why}
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Workers: measurements that need a fresh process (memory, load time, big models)


class WorkerError(RuntimeError):
    """A worker process failed; the message carries the tail of its log."""


def worker_env() -> dict[str, str]:
    """The environment of worker processes: ours, with the repository on PYTHONPATH."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def run_worker(
    task: str, args: dict[str, Any], *, timeout: float, verbose: bool = False, zygote: Any = None
) -> dict[str, Any]:
    """Run worker `task` in its own process and return its JSON result: a child forked from `zygote` (a
    bench.zygote.Zygote: the imports already done), or without one a fresh `python -m bench.workers TASK ARGS_JSON`.

    Its own process gives clean peak-RSS numbers and releases multi-GB models when it exits. Its log goes to
    our stderr with `verbose`, else it is kept and shown only when the worker fails.
    """
    logger.info("worker %s %s", task, json.dumps(args))
    if zygote is not None:
        return _run_forked(zygote, task, args, timeout=timeout, verbose=verbose)
    command = [sys.executable, "-m", "bench.workers", task, json.dumps(args)]
    try:
        proc = subprocess.run(
            command,
            cwd=REPO,
            env=worker_env(),
            stdout=subprocess.PIPE,
            stderr=None if verbose else subprocess.PIPE,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or "")[-3000:] if isinstance(exc.stderr, str) else ""
        raise WorkerError(f"worker {task} timed out after {timeout:.0f}s\n{tail}") from None
    return _worker_result(task, proc.returncode, proc.stdout, proc.stderr or "")


def _run_forked(zygote: Any, task: str, args: dict[str, Any], *, timeout: float, verbose: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-worker-") as tmp:
        out, err = Path(tmp) / "stdout", None if verbose else Path(tmp) / "stderr"

        def text(path: Path | None) -> str:
            return path.read_text(errors="replace") if path is not None and path.is_file() else ""

        try:
            code = zygote.run(task, args, out, err, timeout)
        except TimeoutError:
            raise WorkerError(f"worker {task} timed out after {timeout:.0f}s\n{text(err)[-3000:]}") from None
        return _worker_result(task, code, text(out), text(err))


def _worker_result(task: str, code: int, stdout: str, stderr: str) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            payload = json.loads(line[len(RESULT_PREFIX) :])
            if code == 0 and "error" not in payload:
                return payload
            raise WorkerError(f"worker {task}: {payload.get('error')}\n{stderr[-3000:]}")
    raise WorkerError(f"worker {task} exited with {code} and no result\n{stderr[-3000:]}")
