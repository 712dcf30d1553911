"""The AWS Lambda cold start, measured locally (`python -m bench --only lambda`): what an execution environment pays
before it answers, for the demo model and the full-size random SD 1.5, each prepared with
`python -m studio.models export-openvino` (cached under studio.config.cache_dir()/bench, built on first use).

Each round is a fresh Python process started the way Lambda's init starts one (the studio's handler module imported,
its engine built from STUDIO_* and loaded) and timed from spawn to ready, with phases:
- `engine`: what studio.serving.aws_lambda does now: LocalEngine + OpenVINOAccelerator on the export (torch weights
  read, the prepared IR compiled, nothing converted), then a first and a second small request through the handler
  (the first one also hashes the UNet weights for the infotext's "Model hash", and OpenVINO prepares its weights
  on the first inference).
- `ir_only`: studio.engines.openvino.load_prepared_pipeline on the same export: configs + IR only, no torch weights
  (what the engine does once LocalEngine asks its accelerator first; see OpenVINOAccelerator.load_pipeline), then
  the same two requests as plain pipeline calls.
`cold_start_s` is spawn -> ready; `first_image_s` is spawn -> the first answer (what the first caller waits).
Peak RSS (VmHWM) says how much memory the function needs. No container start or image pull is included (Lambda adds
those, and caches the image near the function after the first pull).
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.core import REPO

logger = logging.getLogger(__name__)

READY = "LAMBDA_COLD_START "
# Runs in a fresh interpreter (argv: mode, export path, request size, the parent's time.time() at spawn) and prints
# one READY line with its phases; cold_start_s = spawn -> ready, interpreter start-up included.
_PROBE = r"""
import json, resource, sys, time
started = time.perf_counter()
mode, path, size, spawned = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
out = {"interpreter_s": time.time() - spawned}
if mode == "engine":
    from studio.serving import aws_lambda
    out["import_s"] = time.perf_counter() - started
    app = aws_lambda.environment_app()
    out["build_s"] = time.perf_counter() - started - out["import_s"]
    mark = time.perf_counter()
    app.start(wait=3600)
    if app.load_error:
        raise SystemExit(app.load_error)
    out["load_s"] = time.perf_counter() - mark
    out["cold_start_s"] = time.time() - spawned
    status = app.engine.status()
    out["precision"] = status.dtype
    out["accelerator"] = status.details.get("accelerator", "")
    request = {"prompt": "a lighthouse at dusk", "steps": 1, "width": size, "height": size, "seed": 3}
    for name in ("first_request_s", "second_request_s"):
        mark = time.perf_counter()
        answer = app(request, None)
        assert "images" in answer, answer
        out[name] = time.perf_counter() - mark
else:
    from studio.engines.openvino import load_prepared_pipeline
    out["import_s"] = time.perf_counter() - started
    mark = time.perf_counter()
    pipe, report = load_prepared_pipeline(path)
    out["load_s"] = time.perf_counter() - mark
    out["cold_start_s"] = time.time() - spawned
    out["precision"] = report.precision
    import torch
    for name in ("first_request_s", "second_request_s"):
        mark = time.perf_counter()
        pipe("a lighthouse at dusk", num_inference_steps=1, width=size, height=size,
             generator=torch.Generator("cpu").manual_seed(3))
        out[name] = time.perf_counter() - mark
out["first_image_s"] = out["cold_start_s"] + out["first_request_s"]
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("LAMBDA_COLD_START " + json.dumps(out), flush=True)
"""


def export_dir(model: str) -> Path:
    """The prepared export of a bench model (demo or sd15), built on first use (SD 1.5: ~30 s once its IR is
    cached, ~2 min and ~6 GB of RAM when it must be converted)."""
    from bench.models import bench_cache, model_spec
    from studio.engines.openvino_export import export_openvino, read_manifest
    from studio.fs import file_lock

    target = bench_cache() / f"lambda-{model}-openvino"
    if read_manifest(target) is None:
        with file_lock(target.with_name(target.name + ".lock")):
            if read_manifest(target) is None:
                export_openvino(model_spec(model), target)
    return target


def _probe(mode: str, path: Path, size: int, env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, mode, str(path), str(size), repr(time.time())],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith(READY):
            result = json.loads(line[len(READY) :])
            return {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}
    raise RuntimeError(f"cold-start probe ({mode}, {path.name}) failed:\n{proc.stderr[-3000:]}")


def lambda_cold_start(model: str, rounds: int, size: int) -> dict[str, Any]:
    """Worker task: `rounds` fresh processes per mode on the export of `model` (medians and every round)."""
    path = export_dir(model)
    cache = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-lambda-cache-{os.getpid()}"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "STUDIO_MODEL": str(path),
        "STUDIO_CACHE": str(cache),  # Lambda's /tmp: empty at every cold start (no IR cache, no hash cache)
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("STUDIO_ENGINE", None)  # the handler's default: OpenVINO
    result: dict[str, Any] = {"model": model, "export": str(path), "request_size": size}
    for mode in ("engine", "ir_only"):
        runs = [_probe(mode, path, size, env) for _ in range(rounds)]
        keys = [k for k, v in runs[0].items() if isinstance(v, float)]
        result[mode] = {
            "median": {k: round(statistics.median(r[k] for r in runs), 2) for k in keys},
            "rounds": runs,
        }
    result["converted_at_cold_start"] = (cache / "openvino").exists()
    return result


def lambda_section(ctx: Any) -> dict[str, Any]:
    """`lambda.cold_start_s.<model>` (engine path, spawn -> ready) for the demo and the full-size SD 1.5 exports;
    `ir_only` is the same load from the IR alone; peak RSS and the first requests alongside."""
    rounds = 1 if ctx.profile.name != "full" else 3
    out: dict[str, Any] = {key: {} for key in ("cold_start_s", "first_image_s", "ir_only_s", "peak_rss_mb")}
    out["models"] = {}
    for model, size in (("demo", 64), ("sd15", 256)):
        measured = ctx.worker("lambda_cold_start", model=model, rounds=rounds, size=size)
        out["models"][model] = measured
        engine, ir_only = measured["engine"]["median"], measured["ir_only"]["median"]
        out["cold_start_s"][model] = engine["cold_start_s"]
        out["first_image_s"][model] = engine["first_image_s"]
        out["ir_only_s"][model] = {"cold_start_s": ir_only["cold_start_s"], "first_image_s": ir_only["first_image_s"]}
        out["peak_rss_mb"][model] = {"engine": engine["peak_rss_mb"], "ir_only": ir_only["peak_rss_mb"]}
    return out
