"""Bench section `peer`: the studio against optimum-intel's OVStableDiffusionPipeline (issue 14, goal 0) on the same
machine, model (the full-size random SD 1.5), size (512²), scheduler (Euler a), steps (20) and OpenVINO version.

optimum-intel 2.2 pins transformers 5.5 and the studio pins 5.23, so the peer cannot be installed beside the studio:
it runs from its own venv, `make peer-venv` (.peer-venv) or the python named by STUDIO_BENCH_PEER_PYTHON, through
bench/peer_worker.py, which never imports the studio. Without one the section is skipped, saying how to make it.

Fields (`peer.*`):
- `versions`: the peer venv's optimum-intel, openvino, diffusers, transformers and torch; `same_openvino` (the
  comparison means something only when both sides run the same OpenVINO).
- `export_s`: the peer's one-off export of the model (optimum-intel's defaults), cached in the bench cache.
- `per_step.<weights>`: one peer process, interleaved rounds, same inputs: the peer's UNet at its recommended static
  `reshape(1, 512, 512)` against the studio's UNet IR of that weight setting (auto = the default int8, int8-hybrid,
  int8-full) compiled at the same static shape with the studio's config. `ratio` = ours ÷ peer per step (median of
  the per-round ratios; `round_ratio_min` / `round_ratio_max` the spread); at most 1.0 is goal 0.
  `peer_precision`: what the peer's UNet runs in.
- `first_image`: each side in a fresh process, as a CPU user starts it, caches warm (the studio's IR cache, the
  peer's export and compiled-blob cache), making `IMAGES` images: `peer` and `ours.<weights>` {load_s,
  first_image_s, later_images_s, time_to_first_image_s, peak_rss_mb}, and per weights `ratio_time_to_first_image`,
  `ratio_20_steps` (the best of the later images: a 20-step generation alone; one image's time swings by ~5 % on
  this shared machine) and `ratio_peak_rss`, each ours ÷ peer.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from bench.core import REPO, WorkerError, _worker_result, ratio_summary

PEER_ENV = "STUDIO_BENCH_PEER_PYTHON"
PEER_VENV = REPO / ".peer-venv"
PEER_EXPORT = "sd15-random-v1-optimum"  # in the bench cache, beside the full-size model it is exported from
WEIGHTS = ("auto", "int8-hybrid", "int8-full")  # the studio's UNet IRs the peer is measured against
SIZE, STEPS, IMAGES = 512, 20, 3


def peer_python() -> Path | None:
    """The peer venv's python: STUDIO_BENCH_PEER_PYTHON, else .peer-venv's; None when neither exists."""
    named = os.environ.get(PEER_ENV)
    if named:
        path = Path(named)
        if not path.is_file():
            raise FileNotFoundError(f"{PEER_ENV}={named}: no such python")
        return path
    default = PEER_VENV / "bin" / "python"
    return default if default.is_file() else None


def run_peer(python: Path, task: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
    """bench/peer_worker.py `task` in the peer's venv, in a fresh process; its result (WorkerError if it failed)."""
    command = [str(python), str(Path(__file__).with_name("peer_worker.py")), task, json.dumps(args)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the studio's packages stay out of it
    try:
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise WorkerError(f"peer {task} timed out after {timeout:.0f}s") from None
    return _worker_result(f"peer {task}", proc.returncode, proc.stdout, proc.stderr)


def studio_first_image(weights: str, size: int = SIZE, steps: int = STEPS, images: int = IMAGES) -> dict[str, Any]:
    """Worker (our venv, fresh process): the OpenVINO engine on the full-size model as `make run` builds it, with
    --openvino-weights `weights`: load, then `images` images as the peer makes them (bench.peer_worker.first_image)."""
    from bench.core import peak_rss_mb, timed
    from bench.models import ensure_fullsize
    from bench.workers import PROMPT
    from studio import engines
    from studio.config import EngineSettings
    from studio.types import GenerationRequest

    settings = EngineSettings(model=str(ensure_fullsize()), kind="openvino", device="cpu", openvino_weights=weights)
    engine = engines.build(settings)
    load_s, _ = timed(engine.load)
    request = GenerationRequest(prompt=PROMPT, width=size, height=size, steps=steps, cfg_scale=7.0, seed=1,
                                sampler="Euler a")
    first_s, result = timed(lambda: engine.generate(request))
    later = [timed(lambda: engine.generate(request))[0] for _ in range(images - 1)]
    report = engine.accelerator.report
    return {
        "load_s": round(load_s, 2),
        "first_image_s": round(first_s, 2),
        "later_images_s": [round(s, 2) for s in later],
        "time_to_first_image_s": round(load_s + first_s, 2),
        "peak_rss_mb": peak_rss_mb(),
        "image_size": list(result.images[0].size),
        "warm": report.warm,
        "weights": report.weights,
        "unet_xml": next(f"{c.ir_dir}/model.xml" for c in report.components if c.name == "unet"),
    }


def _ratios(ours: dict[str, Any], peer: dict[str, Any]) -> dict[str, float]:
    return {
        "ratio_time_to_first_image": round(ours["time_to_first_image_s"] / peer["time_to_first_image_s"], 3),
        "ratio_20_steps": round(min(ours["later_images_s"]) / min(peer["later_images_s"]), 3),
        "ratio_peak_rss": round(ours["peak_rss_mb"] / peer["peak_rss_mb"], 3),
    }


def section(ctx: Any) -> dict[str, Any]:
    """`peer.per_step.auto.ratio`: the studio's OpenVINO UNet step ÷ optimum-intel's at 512² (its own venv)."""
    python = peer_python()
    if python is None:
        return {"skipped": f"no peer venv: make peer-venv (optimum-intel in {PEER_VENV.name}), or {PEER_ENV}=python"}
    from importlib.metadata import version

    from bench.models import bench_cache, ensure_fullsize

    timeout = ctx.profile.worker_timeout
    folder = bench_cache() / PEER_EXPORT
    out: dict[str, Any] = {"python": str(python)}
    if not (folder / "model_index.json").is_file():
        exported = run_peer(python, "export", {"source": str(ensure_fullsize()), "out": str(folder)}, timeout)
        out["export_s"] = exported["export_s"]
    ours: dict[str, dict[str, Any]] = {}
    for weights in WEIGHTS:
        run = ctx.worker("studio_first_image", weights=weights)
        if not run["warm"]:  # that load converted: measure the warm load a user has from then on
            run = ctx.worker("studio_first_image", weights=weights)
        ours[weights] = run
    step = run_peer(
        python, "step", {"peer": str(folder), "ours": {w: r["unet_xml"] for w, r in ours.items()}, "size": SIZE,
                         "rounds": 5}, timeout,
    )
    out["versions"] = step["versions"]
    out["same_openvino"] = step["versions"]["openvino"] == version("openvino")
    out["per_step"] = {
        weights: {**ratio_summary(step["rounds"][weights], step["rounds"]["peer"]), "ours_s": step["median_s"][weights],
                  "peer_s": step["median_s"]["peer"]}
        for weights in WEIGHTS
    }
    out["peer_precision"] = step["peer_precision"]
    args = {"peer": str(folder), "size": SIZE, "steps": STEPS}
    run_peer(python, "first_image", {**args, "images": 1}, timeout)  # its compiled-blob cache, as a user's 2nd start
    peer = run_peer(python, "first_image", {**args, "images": IMAGES}, timeout)
    out["first_image"] = {"peer": peer, "ours": ours, **{w: _ratios(r, peer) for w, r in ours.items()}}
    return out
