"""The benchmark suite: its helpers, and a short real run that writes the contract JSON.

The benchmark itself is not part of the tests (its figures depend on the machine); this only checks that
`python -m bench` runs and writes what bench/README.md promises.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench.cli import select, table
from bench.core import (
    CONTRACT_FIELDS,
    GOALS,
    Stats,
    evaluate_goals,
    get_path,
    interleave,
    percentile,
    ratio_summary,
    set_default_path,
)
from studio.testing.servers import REPO


def test_stats_and_percentiles():
    stats = Stats.of([3.0, 1.0, 2.0, 10.0])
    assert (stats.n, stats.median, stats.min, stats.max) == (4, 2.5, 1.0, 10.0)
    assert stats.p25 <= stats.median <= stats.p75
    assert stats.as_dict(1000, 1)["median"] == 2500.0
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 95)) == (50.0, 95.0)
    with pytest.raises(ValueError):
        Stats.of([])


def test_ratio_is_the_median_of_paired_rounds():
    # One burst (round 2, both runs slowed) moves neither figure; a burst on one side spoils one round only.
    engine = [1.02, 5.10, 1.03, 1.01, 9.0]
    raw = [1.00, 5.00, 1.00, 1.00, 1.0]
    summary = ratio_summary(engine, raw)
    assert summary["ratio"] == pytest.approx(1.02, abs=1e-3)
    assert summary["round_ratio_max"] == 9.0
    assert summary["ratio_of_medians"] == pytest.approx(1.03, abs=1e-3)


def test_interleave_alternates_order_after_warmup():
    calls: list[str] = []
    times = interleave({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert [len(v) for v in times.values()] == [3, 3]


def test_goals_and_contract_defaults():
    results: dict = {"engine_vs_raw": {"ratio": 1.01}, "serving_overhead_ms_512": 75.0}
    for field in CONTRACT_FIELDS:
        set_default_path(results, field, None)
    assert get_path(results, "task_switch.reloads") is None and get_path(results, "engine_vs_raw.ratio") == 1.01
    goals = evaluate_goals(results)
    assert goals["engine_vs_raw.ratio"]["met"] is True
    assert goals["serving_overhead_ms_512"]["met"] is False
    assert goals["openvino_vs_torch.speedup"]["met"] is None  # not measured: neither met nor failed
    assert "gpu.speedup" not in goals  # only on GPU hosts
    # every goal's field is always in the file (null when not run), except the GPU goal of GPU hosts
    assert {g.field for g in GOALS if not g.field.startswith("gpu.")} <= set(CONTRACT_FIELDS)
    assert {"machine.bf16_matmul_tflops", "openvino_vs_torch.unet_tflop_512", "preview_overhead_pct"} <= set(
        CONTRACT_FIELDS
    )
    results["goals"] = goals
    text = table(results)
    assert "NOT MET" in text and "engine_vs_raw.ratio" in text


def test_section_selection_keeps_order_and_rejects_unknown_names():
    assert select("task_switch,engine_vs_raw", None) == ["engine_vs_raw", "task_switch"]
    assert "openvino" not in select(None, "openvino,gpu")
    with pytest.raises(SystemExit, match="valid:"):
        select("engine_vs_rawr", None)


@pytest.mark.slow
def test_quick_run_of_a_fast_subset_writes_the_contract_json(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [
        sys.executable, "-m", "bench", "--quick", "--only", "engine_vs_raw,task_switch", "--rounds", "1",
        "--out", str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    latest = tmp_path / "latest.json"
    data = json.loads(latest.read_text())
    assert len(list(tmp_path.glob("*-quick-capped1.json"))) == 1  # the timestamped copy
    for field in CONTRACT_FIELDS:
        assert field.split(".")[0] in data, field
    assert isinstance(data["engine_vs_raw"]["ratio"], float) and data["engine_vs_raw"]["ratio"] > 0
    assert data["engine_vs_raw"]["cases"][0]["same_image_pixel_diff"]["max"] == 0  # the engine is plain diffusers
    assert data["task_switch"]["reloads"] == 0 and data["task_switch"]["shared_modules"] is True
    assert isinstance(data["task_switch"]["rss_increase_pct"], float)
    assert data["serving_overhead_ms_512"] is None and data["openvino_vs_torch"]["speedup"] is None  # not selected
    assert data["goals"]["engine_vs_raw.ratio"]["goal"] == "<= 1.03"
    assert data["task_switch"]["goals"]["reloads"] == {"goal": "== 0", "met": True}
    assert data["sections"] == {name: data["sections"][name] for name in ("engine_vs_raw", "task_switch")}
    assert all(s["status"] == "ok" for s in data["sections"].values())
    assert "engine_vs_raw.ratio" in proc.stdout  # the printed table
    assert data["workers"] == "forked from bench.zygote"


@pytest.fixture(scope="module")
def zygote():
    from bench.core import worker_env
    from bench.zygote import Zygote

    instance = Zygote(worker_env(), REPO)
    yield instance
    instance.close()


@pytest.mark.slow
def test_a_forked_worker_reports_its_result_errors_and_timeouts_and_the_zygote_survives_them(zygote):
    from bench.core import WorkerError, rss_mb, run_worker

    with pytest.raises(WorkerError, match="unexpected keyword argument 'bogus'"):
        run_worker("load_time", {"model": "demo", "rounds": 1, "bogus": 1}, timeout=120, zygote=zygote)
    with pytest.raises(WorkerError, match="timed out after 1s"):
        run_worker("hardware", {"sizes": [256]}, timeout=1, zygote=zygote)
    result = run_worker("peak_rss", {"model": "demo", "engine": "torch", "size": 64, "steps": 1}, timeout=120,
                        zygote=zygote)  # fmt: skip
    assert result["model"] == "demo" and result["peak_rss_mb"] >= result["rss_after_import_mb"] > 0
    # The child's RSS starts at the zygote's (its file-backed pages faulted in), as a fresh worker's would after the
    # same imports: not ~100 MB lower, which forked children without fault_in_like show.
    zygote_rss = rss_mb(zygote.pid)
    assert zygote_rss is not None and result["rss_after_import_mb"] >= 0.97 * zygote_rss


def test_fault_in_like_touches_the_file_pages_a_fork_leaves_out():
    """As in the zygote: a quiet parent that imported torch forks; the child reports its RSS before and after."""
    script = """
import json, os, sys
import torch  # hundreds of MB of library pages, as in the zygote
from bench.core import rss_mb
from bench.zygote import fault_in_like
parent = os.getpid()
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    try:
        before = rss_mb()
        touched = fault_in_like(parent)
        os.write(write, json.dumps([before, touched, rss_mb()]).encode())
    finally:
        os._exit(0)
os.close(write)
child = os.read(read, 4096).decode()
os.waitpid(pid, 0)
print(json.dumps({"child": json.loads(child), "parent": rss_mb()}))
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    (before, touched, after), ours = out["child"], out["parent"]
    assert touched > 1000  # pages of the libraries the parent imported
    assert before < 0.9 * ours  # without it, a forked worker's figures would start this much lower
    assert after >= 0.97 * ours


def test_a_section_whose_extra_is_missing_is_skipped_naming_the_package(monkeypatch):
    from bench import cli
    from bench.core import WorkerError

    def needs_moto(_ctx):
        raise ModuleNotFoundError("No module named 'moto'", name="moto")

    def worker_needs_ray(_ctx):
        raise WorkerError("worker ray_serve failed: ModuleNotFoundError: No module named 'ray.serve'")

    def broken(_ctx):
        raise ModuleNotFoundError("No module named 'studio.nowhere'", name="studio.nowhere")

    monkeypatch.setitem(cli.SECTIONS, "async_remote", needs_moto)
    monkeypatch.setitem(cli.SECTIONS, "ray_serve", worker_needs_ray)
    monkeypatch.setitem(cli.SECTIONS, "gradio", broken)
    results = cli.run(["async_remote", "ray_serve", "gradio"], quick=True, explicit=True)
    assert results["sections"]["async_remote"]["status"] == "skipped"
    assert "moto" in results["async_remote"]["skipped"]
    assert results["sections"]["ray_serve"]["status"] == "skipped" and "ray" in results["ray_serve"]["skipped"]
    assert results["sections"]["gradio"]["status"] == "error"  # the studio's own module missing is a bug
    assert "skipped" in table(results)


def test_peak_fraction_is_achieved_tflops_over_the_machine_peak():
    from bench.sections import peak_fraction

    speed = {"per_size": {"256": {"openvino_step_s": {"median": 0.5}}, "512": {"openvino_step_s": {"median": 2.0}}}}
    machine = {"unet_tflop": {"256": 0.36, "512": 1.6}, "bf16_matmul_tflops": 1.0}
    out = peak_fraction(speed, machine)
    assert out["unet_tflop_512"] == 1.6
    assert out["unet_peak_fraction_256"] == pytest.approx(0.72) and out["unet_peak_fraction_512"] == pytest.approx(0.8)
    assert speed["per_size"]["512"]["achieved_tflops"] == pytest.approx(0.8)
    assert peak_fraction({"per_size": {"256": speed["per_size"]["256"]}}, machine)["unet_peak_fraction_512"] is None


def test_peak_fraction_is_taken_at_the_precision_the_engine_ran():
    """On a CPU without native bf16 the engine runs f32: its step is measured against the f32 peak, not bf16's."""
    from bench.sections import peak_fraction

    machine = {"unet_tflop": {"512": 1.6}, "bf16_matmul_tflops": 0.2, "f32_matmul_tflops": 0.4}
    for precision, fraction in (("bf16", 4.0), ("f32", 2.0)):
        speed = {"openvino": {"precision": precision}, "per_size": {"512": {"openvino_step_s": {"median": 2.0}}}}
        out = peak_fraction(speed, machine)
        assert out["peak_precision"] == precision and out["peak_tflops"] == machine[f"{precision}_matmul_tflops"]
        assert out["unet_peak_fraction_512"] == pytest.approx(fraction)
        assert out["bf16_matmul_tflops"] == 0.2  # the contract field stays, whichever peak was used


@pytest.mark.parametrize("native", [True, False])
def test_machine_peak_measures_both_precisions_and_says_whether_bf16_is_native(monkeypatch, native):
    pytest.importorskip("openvino")
    from bench.hardware import machine_peak
    from studio.engines import openvino

    monkeypatch.setattr(openvino, "cpu_bf16", lambda: (native, "as this test says"))
    peak = machine_peak(side=256, repeats=1)
    assert peak["bf16_native"] is native
    for precision in ("bf16", "f32"):
        measured = [peak[f"torch_{precision}_tflops"], peak[f"openvino_{precision}_tflops"]]
        if precision == "f32" and peak["bf16_native"]:  # the engine runs bf16 here: OpenVINO's f32 is not measured
            assert measured[1] is None
            measured = measured[:1]
        assert all(v > 0 for v in measured) and peak[f"{precision}_matmul_tflops"] == max(measured)


def test_unet_flops_are_counted_for_the_sd15_architecture():
    from bench.hardware import unet_tflop

    flops = unet_tflop([256, 512])
    assert 1.4 < flops["512"] < 1.8  # a guided SD 1.5 step at 512² is about 1.6 TFLOP
    assert 4 < flops["512"] / flops["256"] < 5  # 4x the pixels, plus attention's quadratic part


def test_end_to_end_is_split_into_step_and_fixed_costs():
    from bench.sections import end_to_end_costs

    speed = {
        "per_size": {"512": {"openvino_step_s": {"median": 5.0}, "torch_step_s": {"median": 10.0}}},
        "end_to_end": {"size": 512, "steps": 4, "openvino_s": 26.0, "torch_s": 64.0, "speedup": 2.46},
    }
    e2e = end_to_end_costs(speed)["e2e_512"]
    assert e2e["fixed_s"] == 6.0 and e2e["fixed_steps"] == 1.2 and e2e["torch_fixed_s"] == 24.0
    assert e2e["speedup_20"] == pytest.approx((24 + 200) / (6 + 100), abs=1e-3)
    assert end_to_end_costs({"per_size": {}}) == {}


def test_openvino_memory_compares_fresh_process_peaks(monkeypatch):
    """The memory part of the openvino section: torch, warm and cold runs of peak_rss, and the goal fractions."""
    import dataclasses

    from bench.sections import FULL, QUICK, Context, openvino_memory

    calls = []
    peaks = {"torch": (5000.0, 100.0), "warm": (2000.0, 40.0), "cold": (5800.0, 300.0)}

    def worker(self, task, **args):
        calls.append((task, args))
        kind = "torch" if args["engine"] == "torch" else "cold" if args.get("openvino_cache") else "warm"
        peak, seconds = peaks[kind]
        return {"peak_rss_mb": peak, "load_and_first_image_s": seconds, "openvino_warm": kind == "warm"}

    monkeypatch.setattr(Context, "worker", worker)
    assert openvino_memory(Context(QUICK)) == {}
    out = openvino_memory(Context(dataclasses.replace(FULL, openvino_memory=(512, 2, True))))
    assert [task for task, _ in calls] == ["peak_rss"] * 3 and all(a["size"] == 512 for _, a in calls)
    assert out["warm_load_rss_fraction"] == 0.4 and out["warm_load_time_fraction"] == 0.4
    assert out["cold_convert_peak_rss_mb"] == 5800.0 and out["warm_load_was_warm"] is True
    goals = evaluate_goals({"openvino_vs_torch": out})
    assert goals["openvino_vs_torch.warm_load_rss_fraction"]["met"] is True
    assert goals["openvino_vs_torch.cold_convert_peak_rss_mb"]["met"] is True


@pytest.mark.parametrize("weights", ["int8-hybrid", "int8-full"])
def test_the_calibrated_int8_engines_are_measured_like_the_default_one(monkeypatch, weights):
    """openvino_vs_torch.hybrid / .full: one openvino_speed worker with those weights, and the same derived fields."""
    from bench.sections import INT8_MODES, QUICK, Context, openvino_int8_mode

    calls = []

    def worker(self, task, **args):
        calls.append((task, args))
        step = {"openvino_step_s": {"median": 2.0}, "torch_step_s": {"median": 8.0}, "speedup": 4.0}
        e2e = {"size": 512, "steps": 4, "openvino_s": 12.0, "torch_s": 40.0, "speedup": 3.33}
        return {"per_size": {"512": step}, "speedup": 4.0, "end_to_end": e2e}

    monkeypatch.setattr(Context, "worker", worker)
    monkeypatch.setattr(Context, "hardware", lambda self: {"bf16_matmul_tflops": 0.5, "unet_tflop": {"512": 1.6}})
    out = openvino_int8_mode(Context(QUICK), weights, 512, 3)
    assert calls == [
        ("openvino_speed", {"model": "sd15", "sizes": [512], "rounds": 3, "precision": f"bf16:{weights}",
                            "e2e": [512, 4]})
    ]
    assert weights in INT8_MODES.values()
    assert out["unet_peak_fraction_512"] == pytest.approx(1.6)  # int8 kernels may pass the bf16 peak
    assert out["e2e_512"]["fixed_s"] == 4.0 and out["e2e_512"]["speedup_20"] == pytest.approx(168 / 44, abs=1e-3)


def test_drafts_measure_each_vae_and_an_lcm_image_on_the_demo():
    pytest.importorskip("openvino")
    from bench.drafts import lcm_image, vae_decode

    decode = vae_decode("demo", 64, 1)
    assert {"torch_s", "openvino_s", "taesd_s"} <= set(decode) and decode["taesd_speedup"] > 0
    assert len(decode["taesd_speedup_spread"]) == 2
    lcm = lcm_image("demo", 64)
    assert lcm["sampler"] == "LCM" and lcm["steps"] == 4 and lcm["openvino_taesd_s"] > 0
    assert "Sampler: LCM" in lcm["infotext"] and "VAE: Approx (TAESD)" in lcm["infotext"]


def test_preview_cost_is_timed_in_the_loop_beside_the_interleaved_cross_check():
    from bench.a1111 import preview_cost

    out = preview_cost("demo", 64, 6, rounds=2)
    assert out["every"] == 2 and out["previews_per_run"] == 2  # after steps 2 and 4; never after the last
    assert out["preview_in_loop_ms"]["n"] == 2 * 2 and out["preview_size"] == [8, 8]
    assert 0 < out["overhead_pct"] < 100 and isinstance(out["interleaved_overhead_pct"], float)
    assert out["derived_overhead_pct"] > 0  # the earlier field, still there
    with pytest.raises(ValueError, match="steps=2: no live preview"):
        preview_cost("demo", 64, 2, rounds=1)


def test_the_quick_profile_leaves_the_hosting_stacks_and_informational_sections_to_only_and_checks_its_budget(
    monkeypatch,
):
    from bench import cli

    ran = []
    names = ["hardware", "ray_serve", "dlc", "lambda", "gradio", "drafts"]
    for name in names:
        monkeypatch.setitem(cli.SECTIONS, name, lambda ctx, name=name: ran.append(name) or {"value": 1})
    results = cli.run(names, quick=True)
    assert ran == ["hardware"]
    assert results["sections"]["gradio"]["status"] == "skipped" and "--only gradio" in results["gradio"]["skipped"]
    assert results["sections"]["dlc"]["status"] == "skipped" and "--only dlc" in results["dlc"]["skipped"]
    assert results["goals"]["total_seconds"]["met"] is True and results["goals"]["total_seconds"]["goal"] == "<= 180"
    assert cli.run(["dlc"], quick=True, explicit=True)["sections"]["dlc"]["status"] == "ok" and ran[-1] == "dlc"
    assert "total_seconds" not in cli.run(["dlc"], quick=True, explicit=True)["goals"]
