"""bench.peer: the section against optimum-intel, which runs from its own venv (none in CI: the real run is in the
issue's note). Here: the skip that says how to get one, a named python that does not exist, a peer worker that fails
in its venv surfacing as a WorkerError with its log, and how the section assembles its fields and ratios."""

from __future__ import annotations

import importlib.util
import sys
from importlib.metadata import version

import pytest

from bench import peer
from bench.core import WorkerError, evaluate_goals
from bench.sections import FULL, QUICK, SECTIONS, Context


def test_without_a_peer_venv_the_section_is_skipped_saying_how_to_make_one(monkeypatch, tmp_path):
    monkeypatch.delenv(peer.PEER_ENV, raising=False)
    monkeypatch.setattr(peer, "PEER_VENV", tmp_path / ".peer-venv")
    out = peer.section(Context(FULL))
    assert "make peer-venv" in out["skipped"] and peer.PEER_ENV in out["skipped"]
    assert SECTIONS["peer"] is peer.section and "peer" in QUICK.full_only and "peer" not in FULL.full_only


def test_a_named_peer_python_that_does_not_exist_is_an_error_naming_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv(peer.PEER_ENV, str(tmp_path / "nope" / "python"))
    with pytest.raises(FileNotFoundError, match=f"{peer.PEER_ENV}=.*nope/python: no such python"):
        peer.peer_python()


def test_a_peer_worker_failing_in_its_venv_is_a_worker_error_with_its_log():
    # This venv has no optimum-intel: the worker fails the way a broken peer venv does.
    if importlib.util.find_spec("optimum") is not None:
        pytest.skip("optimum is importable here")
    with pytest.raises(WorkerError, match=r"(?s)peer first_image exited with 1 .*No module named 'optimum'"):
        peer.run_peer(sys.executable, "first_image", {"peer": "/nonexistent", "size": 64, "steps": 1}, timeout=120)


def test_the_peer_worker_refuses_an_unknown_task(capsys):
    from bench import peer_worker

    assert peer_worker.main(["train", "{}"]) == 2
    assert "usage: peer_worker.py {export,step,first_image}" in capsys.readouterr().err


def test_the_section_measures_each_weight_setting_warm_against_the_peer(monkeypatch, tmp_path):
    python = tmp_path / "python"
    python.write_text("")
    monkeypatch.setenv(peer.PEER_ENV, str(python))
    monkeypatch.setattr("bench.models.bench_cache", lambda: tmp_path)
    monkeypatch.setattr("bench.models.ensure_fullsize", lambda: tmp_path / "sd15")
    peer_calls, worker_calls = [], []
    loads = {w: 0 for w in peer.WEIGHTS}

    def run_peer(python_, task, args, timeout):
        peer_calls.append((task, args))
        versions = {"openvino": version("openvino")}
        if task == "export":
            (tmp_path / peer.PEER_EXPORT).mkdir()
            (tmp_path / peer.PEER_EXPORT / "model_index.json").write_text("{}")
            return {"export_s": 90.0}
        if task == "step":
            rounds = {w: [1.0, 1.2] for w in args["ours"]} | {"peer": [2.0, 2.0]}
            return {"rounds": rounds, "median_s": {k: 1.1 for k in rounds}, "peer_precision": "bf16",
                    "versions": versions}
        return {"load_s": 10.0, "first_image_s": 50.0, "later_images_s": [49.0, 48.0], "time_to_first_image_s": 60.0,
                "peak_rss_mb": 5000.0}

    def worker(self, task, **args):
        worker_calls.append((task, args))
        loads[args["weights"]] += 1
        return {"load_s": 5.0, "first_image_s": 40.0, "later_images_s": [36.0, 37.0], "time_to_first_image_s": 45.0,
                "peak_rss_mb": 2500.0, "warm": args["weights"] != "int8-full" or loads["int8-full"] > 1,
                "unet_xml": f"/ir/{args['weights']}/model.xml"}

    pytest.importorskip("openvino")
    monkeypatch.setattr(peer, "run_peer", run_peer)
    monkeypatch.setattr(Context, "worker", worker)
    out = peer.section(Context(FULL))
    assert [task for task, _ in peer_calls] == ["export", "step", "first_image", "first_image"]  # 1st: blob cache
    assert [args.get("images") for _, args in peer_calls[2:]] == [1, peer.IMAGES]
    assert peer_calls[1][1]["ours"] == {w: f"/ir/{w}/model.xml" for w in peer.WEIGHTS}
    assert loads == {"auto": 1, "int8-hybrid": 1, "int8-full": 2}  # a load that converted is measured again, warm
    assert out["export_s"] == 90.0 and out["same_openvino"] is True and out["peer_precision"] == "bf16"
    assert out["per_step"]["auto"]["ratio"] == pytest.approx(0.55) and out["per_step"]["auto"]["peer_s"] == 1.1
    assert out["first_image"]["auto"] == {"ratio_time_to_first_image": 0.75, "ratio_20_steps": 0.75,
                                          "ratio_peak_rss": 0.5}
    goals = evaluate_goals({"peer": out})
    assert all(goals[f]["met"] for f in ("peer.per_step.auto.ratio", "peer.first_image.auto.ratio_20_steps"))
