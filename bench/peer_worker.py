"""The peer's side of bench.peer: runs in the peer's own venv (optimum-intel), never imports the studio.

    <peer python> bench/peer_worker.py TASK ARGS_JSON

Tasks (each prints one ``BENCH_RESULT {json}`` line, as bench.workers does):
- `export`: optimum-intel's OVStableDiffusionPipeline export of a diffusers folder to `out` (its defaults: fp16 IR
  weights for SD 1.5's sizes), once.
- `step`: one process, interleaved rounds, same inputs: the peer's UNet at its recommended static
  `reshape(1, size, size)` against the studio's UNet IR files (`ours`: {name: xml}) compiled at the same static shape
  with the studio's config (bf16 inference, LATENCY). Median seconds per guided step and the per-round times.
- `first_image`: the peer as a CPU user runs it: from_pretrained, reshape(1, size, size), compile, then `images`
  `steps`-step images (Euler a): load seconds, each image's seconds, peak RSS, the UNet's precision.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from typing import Any

RESULT_PREFIX = "BENCH_RESULT "  # as bench.core.RESULT_PREFIX
PROMPT = "a photo of an astronaut riding a horse on the moon, detailed, 8k"  # as bench.workers.PROMPT


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("optimum-intel", "openvino", "diffusers", "transformers", "torch")}


def export(source: str, out: str) -> dict[str, Any]:
    from optimum.intel import OVStableDiffusionPipeline

    started = time.perf_counter()
    pipe = OVStableDiffusionPipeline.from_pretrained(source, export=True, compile=False)
    pipe.save_pretrained(out)
    return {"out": out, "export_s": round(time.perf_counter() - started, 1), "versions": _versions()}


def _peer_pipeline(folder: str, size: int) -> Any:
    from diffusers import EulerAncestralDiscreteScheduler
    from optimum.intel import OVStableDiffusionPipeline

    pipe = OVStableDiffusionPipeline.from_pretrained(folder, compile=False)
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.reshape(batch_size=1, height=size, width=size, num_images_per_prompt=1)
    pipe.compile()
    return pipe


def _unet_precision(pipe: Any) -> str:
    """What the peer's compiled UNet runs in (its `request` is the openvino.CompiledModel)."""
    return pipe.unet.request.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # an openvino.Type: "bf16"


def step(peer: str, ours: dict[str, str], size: int, rounds: int, context: int = 768) -> dict[str, Any]:
    import numpy as np
    import openvino as ov

    latent = size // 8
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((2, 4, latent, latent)).astype(np.float32)
    states = rng.standard_normal((2, 77, context)).astype(np.float32)
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY"}
    runs = {}
    for name, xml in ours.items():
        model = core.read_model(xml)
        model.reshape({model.inputs[0]: [2, 4, latent, latent], model.inputs[1]: [], model.inputs[2]: [2, 77, context]})
        request = core.compile_model(model, "CPU", config).create_infer_request()
        timestep = np.array(500.0, np.float32)
        runs[name] = lambda request=request, timestep=timestep: request.infer([sample, timestep, states])
    pipe = _peer_pipeline(peer, size)
    peer_timestep = np.array([500], np.int64)
    runs["peer"] = lambda: pipe.unet(sample=sample, timestep=peer_timestep, encoder_hidden_states=states)
    for run in runs.values():
        run()
        run()  # warm-up: first-call allocations
    times: dict[str, list[float]] = {name: [] for name in runs}
    for index in range(rounds):
        order = list(runs) if index % 2 == 0 else list(runs)[::-1]  # interleaved, alternating order
        for name in order:
            started = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - started)
    return {
        "size": size,
        "rounds": times,
        "median_s": {name: round(statistics.median(values), 4) for name, values in times.items()},
        "peer_precision": _unet_precision(pipe),
        "versions": _versions(),
    }


def first_image(peer: str, size: int, steps: int, images: int = 3) -> dict[str, Any]:
    started = time.perf_counter()
    pipe = _peer_pipeline(peer, size)
    load_s = time.perf_counter() - started
    seconds, image = [], None
    for _ in range(images):
        started = time.perf_counter()
        image = pipe(PROMPT, num_inference_steps=steps, guidance_scale=7.0, height=size, width=size).images[0]
        seconds.append(time.perf_counter() - started)
    return {
        "load_s": round(load_s, 2),
        "first_image_s": round(seconds[0], 2),
        "later_images_s": [round(s, 2) for s in seconds[1:]],
        "time_to_first_image_s": round(load_s + seconds[0], 2),
        "peak_rss_mb": _peak_rss_mb(),
        "image_size": list(image.size),
        "peer_precision": _unet_precision(pipe),
        "versions": _versions(),
    }


TASKS = {"export": export, "step": step, "first_image": first_image}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in TASKS:
        print(f"usage: peer_worker.py {{{','.join(TASKS)}}} ARGS_JSON", file=sys.stderr)
        return 2
    result = TASKS[argv[0]](**json.loads(argv[1]))
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
