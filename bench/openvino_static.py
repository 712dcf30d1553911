"""Static-shape OpenVINO UNet variants (studio.engines.openvino_static) against the dynamic IR: speed, compile time
and memory, on the studio's own engine.

One guided 512² step (batch 2) runs on the dynamic compiled model and on the static variant of that shape, interleaved
(A B / B A), through the same CompiledNetwork call (numpy copies included, as in the engine). Memory is the process
RSS after the dynamic model has run once (its weights are packed on first inference) and after the static variant
has run once; RssAnon is reported beside it, because the IR's memory-mapped weights are shared page cache.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.core import RESULT_PREFIX, Stats, interleave, peak_rss_mb, reset_peak_rss, rss_mb, speedup_fields, timed


def _rss_anon_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def _memory() -> dict[str, float | None]:
    gc.collect()
    return {"rss_mb": rss_mb(), "rss_anon_mb": _rss_anon_mb()}


def _network_with_source(engine: Any, name: str) -> Any:
    """The engine's `name` network, able to compile static variants (static_shapes=0 for now).

    When the engine's network was compiled without a StaticSource, it is replaced (before its first inference, so
    its weights were never packed) by one compiled from the same IR the way openvino.py compiles it."""
    import openvino as ov

    from studio.engines.openvino_modules import CompiledNetwork, install_unet, install_vae, networks
    from studio.engines.openvino_static import StaticSource
    from studio.types import Task

    pipe = engine.pipelines[Task.TXT2IMG]
    module = pipe.unet if name == "unet" else pipe.vae
    current = networks(module)[name]
    if current.source is not None:
        current.set_static_shapes(0)
        return current
    report = engine.accelerator.report
    (component,) = [c for c in report.components if c.name == name]
    core = ov.Core()
    model = core.read_model(str(Path(component.ir_dir) / "model.xml"))
    config = {"INFERENCE_PRECISION_HINT": report.precision, "PERFORMANCE_HINT": "LATENCY"}  # openvino.py's
    network = CompiledNetwork(
        name, core.compile_model(model, "CPU", config), source=StaticSource(model, core, "CPU", config), static_shapes=0
    )
    if name == "unet":
        install_unet(module, network)
    else:
        install_vae(module, network, networks(module)["vae_encoder"])
    del current
    return network


def _dynamic_call(network: Any, inputs: tuple[Any, ...]) -> Any:
    """What `network(*inputs)` does when no static variant is ready (the dynamic request, outputs copied)."""
    import numpy as np

    with network.lock:
        network.request.infer(list(inputs))
        return np.array(network.request.get_output_tensor(0).data, copy=True)


def _compare(network: Any, inputs: tuple[Any, ...], rounds: int) -> dict[str, Any]:
    """Dynamic first call, background static compile, then dynamic vs static interleaved; memory at each stage."""
    import numpy as np

    reset_peak_rss()
    first_s, dynamic_out = timed(lambda: _dynamic_call(network, inputs))
    dynamic_mem = _memory()
    network.set_static_shapes(1)
    shapes = tuple(tuple(x.shape) for x in inputs)
    if network.static.ensure(shapes) is None:  # what the engine's first call of a shape does while dynamic is cold
        raise RuntimeError(f"no static variant of {network.name}: {network.static.status()}")
    static_first_s, (static_out,) = timed(lambda: network(*inputs))
    static_mem = _memory()
    times = interleave(
        {"dynamic": lambda: _dynamic_call(network, inputs), "static": lambda: network(*inputs)}, rounds, warmup=0
    )
    diff = np.abs(static_out - dynamic_out)
    return {
        "dynamic_step_s": Stats.of(times["dynamic"]).as_dict(),
        "static_step_s": Stats.of(times["static"]).as_dict(),
        **speedup_fields(times["dynamic"], times["static"], "static_speedup"),
        "static_compile_s": network.static.status()["compile_seconds"][0],
        "dynamic_first_call_s": round(first_s, 2),
        "static_first_call_s": round(static_first_s, 2),
        "static_compile_and_first_call_s": round(network.static.status()["compile_seconds"][0] + static_first_s, 2),
        "static_max_abs_diff": round(float(diff.max()), 5),
        "static_rel_mean_diff": round(float(diff.mean() / max(float(np.abs(dynamic_out).mean()), 1e-12)), 5),
        "rss_dynamic_mb": dynamic_mem["rss_mb"],
        "rss_with_static_mb": static_mem["rss_mb"],
        "rss_anon_dynamic_mb": dynamic_mem["rss_anon_mb"],
        "rss_anon_with_static_mb": static_mem["rss_anon_mb"],
        "static_extra_rss_mb": round((static_mem["rss_mb"] or 0) - (dynamic_mem["rss_mb"] or 0), 1),
        "peak_rss_mb": peak_rss_mb(),
    }


def openvino_static(
    model: str = "sd15", size: int = 512, rounds: int = 3, precision: str = "bf16", vae: bool = False
) -> dict[str, Any]:
    """Dynamic vs static-shape OpenVINO UNet (one guided step: batch 2) at `size`², and with `vae` the VAE decoder
    (batch 1). Fields: {unet: {dynamic_step_s, static_step_s (Stats), static_speedup (+ spread), static_compile_s,
    rss_dynamic_mb, rss_with_static_mb, static_extra_rss_mb, ...}, vae_decoder: {...} | absent, rss_after_load_mb}."""
    import numpy as np

    from bench.workers import _engine

    engine = _engine(model, "openvino", precision)
    load_s, _ = timed(engine.load)
    out: dict[str, Any] = {
        "model": model,
        "size": size,
        "rounds": rounds,
        "precision": engine.accelerator.report.precision,
        "load_s": round(load_s, 2),
        "rss_after_load_mb": rss_mb(),
    }
    unet = engine.pipelines[next(iter(engine.pipelines))].unet
    rng = np.random.default_rng(size)
    latent = (2, unet.config.in_channels, size // 8, size // 8)
    inputs = (
        rng.standard_normal(latent, dtype=np.float32),
        np.asarray(500.0, dtype=np.float32),
        rng.standard_normal((2, 77, unet.config.cross_attention_dim), dtype=np.float32),
    )
    out["unet"] = _compare(_network_with_source(engine, "unet"), inputs, rounds)
    if vae:
        latents = rng.standard_normal((1, *latent[1:]), dtype=np.float32)
        out["vae_decoder"] = _compare(_network_with_source(engine, "vae_decoder"), (latents,), rounds)
    out["rss_end_mb"] = rss_mb()
    return out


if __name__ == "__main__":  # python -m bench.openvino_static '{"model": "sd15", "rounds": 3}'
    started = time.perf_counter()
    result = openvino_static(**json.loads(sys.argv[1] if len(sys.argv) > 1 else "{}"))
    result["worker_seconds"] = round(time.perf_counter() - started, 1)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
