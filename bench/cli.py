"""`python -m bench [--quick] [--only A,B] [--skip A,B] [--out DIR]`: run the sections, write JSON, print a table.

Results go to ``bench/results/latest.json`` plus a timestamped copy (bench/results/ is git-ignored). The exit code
is 0 when every selected section ran (goals may still be unmet: that is a result, recorded with the goal), 1 when
a section failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench.core import CONTRACT_FIELDS, GOALS, evaluate_goals, get_path, machine_info, set_default_path
from bench.sections import FULL, QUICK, SECTIONS, Context

logger = logging.getLogger("bench")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SCHEMA_VERSION = 1
# Section name -> key in the result JSON (the contract names).
RESULT_KEYS = {"openvino": "openvino_vs_torch"}
MERGED_INTO = {"hardware": "machine"}  # sections whose fields join another result (machine.bf16_matmul_tflops)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the short run (~3 minutes on 2 cores once cached)")
    parser.add_argument("--only", help=f"comma-separated sections to run ({', '.join(SECTIONS)})")
    parser.add_argument("--skip", help="comma-separated sections to leave out")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder (default bench/results)")
    parser.add_argument("--rounds", type=int, help="cap every repetition count (smoke runs; figures get noisier)")
    parser.add_argument("--list", action="store_true", help="list the sections and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="show worker logs")
    parser.add_argument(
        "--fresh-workers",
        action="store_true",
        help="start a new interpreter per worker (default: fork each from one that imported torch and diffusers)",
    )
    return parser


def _names(text: str | None, option: str) -> list[str]:
    if not text:
        return []
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise SystemExit(f"{option}: unknown section(s) {', '.join(unknown)}; valid: {', '.join(SECTIONS)}")
    return names


def select(only: str | None, skip: str | None) -> list[str]:
    """Sections to run, in the canonical order."""
    chosen = _names(only, "--only") or list(SECTIONS)
    skipped = set(_names(skip, "--skip"))
    return [name for name in SECTIONS if name in chosen and name not in skipped]


def missing_package(exc: BaseException) -> str | None:
    """The third-party package a section could not import (in this process or in its worker), else None; a
    missing module of the studio or the bench itself is a bug, not a missing extra."""
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        name = exc.name
    else:
        found = re.search(r"No module named '([\w.]+)'", str(exc))
        if found is None:
            return None
        name = found.group(1)
    top = name.split(".")[0]
    return None if top in ("studio", "bench", "app") else top


def run(
    selected: list[str],
    *,
    quick: bool,
    verbose: bool = False,
    rounds: int | None = None,
    explicit: bool = False,
    fresh_workers: bool = False,
) -> dict[str, Any]:
    """Run `selected` sections and return the complete result dict (not yet written). `explicit`: the sections
    were named with --only, so the profile's full-only sections run too."""
    profile = QUICK if quick else FULL
    if rounds is not None:
        profile = profile.capped(rounds)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "mode": profile.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "selected": selected,
        "workers": "fresh interpreters" if fresh_workers else "forked from bench.zygote",
        "machine": machine_info(),
        "sections": {},
    }
    ctx = Context(profile=profile, verbose=verbose, fresh_workers=fresh_workers)
    try:
        for name in selected:
            section_started = time.perf_counter()
            if name in profile.full_only and not explicit:
                results[RESULT_KEYS.get(name, name)] = {
                    "skipped": f"not in the {profile.name} profile (python -m bench --only {name} runs it)"
                }
                results["sections"][name] = {"status": "skipped", "seconds": 0.0}
                continue
            logger.info("== %s", name)
            try:
                data = SECTIONS[name](ctx)
                status = "skipped" if isinstance(data, dict) and data.get("skipped") else "ok"
            except Exception as exc:
                missing = missing_package(exc)
                if missing is not None:  # an extra of requirements-dev.txt: a skip that names it, not a failure
                    data, status = {"skipped": f"needs {missing} (pip install -r requirements-dev.txt)"}, "skipped"
                    results[RESULT_KEYS.get(name, name)] = data
                    results["sections"][name] = {"status": status, "seconds": 0.0}
                    logger.warning("section %s skipped: %s", name, data["skipped"])
                    continue
                logger.error("section %s failed: %s", name, exc)
                if verbose:
                    traceback.print_exc()
                data = {"error": f"{type(exc).__name__}: {exc}"[:4000]}
                status = "error"
            seconds = round(time.perf_counter() - section_started, 1)
            if name in MERGED_INTO and status == "ok":
                results[MERGED_INTO[name]].update(data)
            else:
                results[RESULT_KEYS.get(name, name)] = data
            results["sections"][name] = {"status": status, "seconds": seconds}
            logger.info("== %s: %s in %.1fs", name, status, seconds)
    finally:
        ctx.close()
    serving = results.get("serving")
    results["serving_overhead_ms_512"] = serving.get("headline_ms") if isinstance(serving, dict) else None
    preview = results.get("previews")
    results["preview_overhead_pct"] = preview.get("overhead_pct") if isinstance(preview, dict) else None
    for dotted in CONTRACT_FIELDS:
        set_default_path(results, dotted, None)
    results["goals"] = evaluate_goals(results)
    for field, goal in results["goals"].items():  # also next to the value, for readers of one section
        if "." not in field:
            continue
        parent, leaf = field.rsplit(".", 1)
        if isinstance(results.get(parent), dict):
            results[parent].setdefault("goals", {})[leaf] = {"goal": goal["goal"], "met": goal["met"]}
    results["machine"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    if profile.budget_s is not None and not explicit:
        total = results["total_seconds"]
        results["goals"]["total_seconds"] = {
            "goal": f"<= {profile.budget_s:g}",
            "value": total,
            "met": total <= profile.budget_s,
            "why": f"the {profile.name} run takes at most {profile.budget_s:g} s with warm caches",
        }
    return results


def write(results: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Write latest.json and a timestamped copy (atomically: a reader never sees half a file)."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    text = json.dumps(results, indent=1, sort_keys=False, default=str) + "\n"
    stamped = out / f"{stamp}-{results['mode']}.json"
    latest = out / "latest.json"
    for path in (stamped, latest):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return latest, stamped


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def table(results: dict[str, Any]) -> str:
    """A short human-readable summary: goals first, then the other recorded figures."""
    rows: list[tuple[str, str, str, str, str]] = []
    goals = results.get("goals", {})
    spread = {
        "engine_vs_raw.ratio": lambda r: _range(
            get_path(r, "engine_vs_raw.cases.0"), "round_ratio_min", "round_ratio_max"
        ),
        "serving_overhead_ms_512": lambda r: _range(get_path(r, "serving.overhead_ms"), "min", "max", " ms"),
        "openvino_vs_torch.speedup": lambda r: _ov_spread(r),
        "task_switch.rss_increase_pct": lambda r: f"peak {_fmt(get_path(r, 'task_switch.peak_rss_mb'))} MB",
        "preview_overhead_pct": lambda r: (
            f"in the loop; A/B {_fmt(get_path(r, 'previews.interleaved_overhead_pct'))} % "
            + _range(get_path(r, "previews"), "round_ratio_min", "round_ratio_max")
        ),
    }
    for goal in GOALS:
        if goal.field not in goals:
            continue
        entry = goals[goal.field]
        met = {True: "met", False: "NOT MET", None: "-"}[entry["met"]]
        extra = spread.get(goal.field, lambda r: "")(results) or ""
        rows.append((goal.field, _fmt(entry["value"]), goal.text, met, extra))
    budget = goals.get("total_seconds")
    if budget is not None:
        met = {True: "met", False: "NOT MET", None: "-"}[budget["met"]]
        rows.append(("total_seconds", _fmt(budget["value"]), budget["goal"], met, "this run, warm caches"))
    for label, path, unit in (
        ("engine_vs_raw: interleaved pairs", "engine_vs_raw.cases.0.ratio_interleaved", ""),
        ("engine_vs_raw: own time outside call", "engine_vs_raw.cases.0.engine_outside_pipeline_ms.median", " ms"),
        ("engine_vs_raw: from outside time", "engine_vs_raw.cases.0.ratio_from_outside", ""),
        ("engine_vs_raw (sd15 256² 4 steps)", "engine_vs_raw.cases.1.ratio", ""),
        ("machine bf16 matmul peak", "machine.bf16_matmul_tflops", " TFLOPS"),
        ("machine f32 matmul peak", "machine.f32_matmul_tflops", " TFLOPS"),
        ("openvino peak fraction taken at", "openvino_vs_torch.peak_precision", ""),
        ("UNet TFLOP per guided 512² step", "openvino_vs_torch.unet_tflop_512", ""),
        ("openvino UNet peak fraction 256²", "openvino_vs_torch.unet_peak_fraction_256", ""),
        ("one live preview", "previews.preview_ms", " ms"),
        ("openvino end-to-end speedup", "openvino_vs_torch.end_to_end.speedup", ""),
        ("openvino 512² fixed cost (in steps)", "openvino_vs_torch.e2e_512.fixed_steps", ""),
        ("openvino 512² speedup at 20 steps (derived)", "openvino_vs_torch.e2e_512.speedup_20", ""),
        ("int8-hybrid 512² step speedup", "openvino_vs_torch.hybrid.speedup", ""),
        ("int8-hybrid 512² speedup at 20 steps (derived)", "openvino_vs_torch.hybrid.e2e_512.speedup_20", ""),
        ("int8-hybrid UNet rel. diff vs torch", "openvino_vs_torch.hybrid.per_size.512.unet_rel_mean_diff", ""),
        ("int8-hybrid max pixel diff (demo)", "openvino_vs_torch.accuracy_demo.bf16:int8-hybrid.max_pixel_diff", ""),
        ("int8-full 512² step speedup", "openvino_vs_torch.full.speedup", ""),
        ("int8-full 512² speedup at 20 steps (derived)", "openvino_vs_torch.full.e2e_512.speedup_20", ""),
        ("int8-full UNet rel. diff vs torch", "openvino_vs_torch.full.per_size.512.unet_rel_mean_diff", ""),
        ("int8-full max pixel diff (demo)", "openvino_vs_torch.accuracy_demo.bf16:int8-full.max_pixel_diff", ""),
        ("openvino f32 max pixel diff (demo)", "openvino_vs_torch.accuracy_demo.f32.max_pixel_diff", ""),
        ("openvino bf16 max pixel diff (demo)", "openvino_vs_torch.accuracy_demo.bf16.max_pixel_diff", ""),
        ("openvino bf16 pixel diff (sd15 e2e)", "openvino_vs_torch.end_to_end.pixel_diff.max", ""),
        ("load run p50", "load_run.p50_s", " s"),
        ("load run p95", "load_run.p95_s", " s"),
        ("load run errors", "load_run.errors", ""),
        ("gradio overhead (512²)", "gradio.overhead_ms.median", " ms"),
        ("async over sync (remote)", "async_remote.async_overhead_over_sync_ms", " ms"),
        ("load demo: folder", "load_time.demo.folder_s.median", " s"),
        ("load demo: single file", "load_time.demo.single_file_s.median", " s"),
        ("load sd15: folder", "load_time.sd15.folder_s.median", " s"),
        ("load sd15: single file", "load_time.sd15.single_file_s.median", " s"),
        ("peak RSS demo (torch)", "peak_rss.demo_torch.peak_during_generate_mb", " MB"),
        ("peak RSS sd15 (torch)", "peak_rss.sd15_torch.peak_during_generate_mb", " MB"),
        ("peak RSS sd15 (openvino)", "peak_rss.sd15_openvino.peak_during_generate_mb", " MB"),
    ):
        value = get_path(results, path)
        if value is not None:
            rows.append((label, _fmt(value) + unit, "", "", ""))
    for name, info in results.get("sections", {}).items():
        if info["status"] != "ok":
            reason = get_path(results, f"{RESULT_KEYS.get(name, name)}.error") or get_path(
                results, f"{RESULT_KEYS.get(name, name)}.skipped"
            )
            rows.append((f"[{name}]", info["status"], "", "", str(reason or "")[:70]))
    headers = ("figure", "value", "goal", "status", "spread / notes")
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    machine = results.get("machine", {})
    lines.append(
        f"mode {results.get('mode')}, {results.get('total_seconds')} s; {machine.get('cpus')} CPUs, load average "
        f"{machine.get('load_avg')} -> {machine.get('load_avg_end')}"
    )
    return "\n".join(lines)


def _range(data: Any, low: str, high: str, unit: str = "") -> str:
    if not isinstance(data, dict) or data.get(low) is None:
        return ""
    return f"rounds {_fmt(data[low])}..{_fmt(data[high])}{unit}"


def _ov_spread(results: dict[str, Any]) -> str:
    per_size = get_path(results, "openvino_vs_torch.per_size") or {}
    parts = [
        f"{size}²: {_fmt(v['speedup'])} ({_fmt(v['round_speedup_min'])}..{_fmt(v['round_speedup_max'])})"
        for size, v in per_size.items()
    ]
    precision = get_path(results, "openvino_vs_torch.precision")
    return (f"{precision} " if precision else "") + "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "botocore", "gradio", "diffusers", "transformers", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    if args.list:
        for name, fn in SECTIONS.items():
            print(f"{name:14} {(fn.__doc__ or '').strip().splitlines()[0] if fn.__doc__ else ''}")
        return 0
    selected = select(args.only, args.skip)
    if not selected:
        print("no sections selected", file=sys.stderr)
        return 2
    results = run(
        selected,
        quick=args.quick,
        verbose=args.verbose,
        rounds=args.rounds,
        explicit=bool(args.only),
        fresh_workers=args.fresh_workers,
    )
    latest, stamped = write(results, args.out)
    print(table(results))
    print(f"results: {latest} (and {stamped.name})")
    return 1 if any(s["status"] == "error" for s in results["sections"].values()) else 0
