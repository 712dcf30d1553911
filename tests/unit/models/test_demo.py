"""studio.models.demo: the demo model is deterministic, written atomically, and built once per cache."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from studio import fs, models
from studio.models import demo
from studio.testing.servers import REPO


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_demo_build_is_byte_identical_across_processes(tmp_path):
    rng_before = torch.get_rng_state()
    here = models.build_demo(tmp_path / "in-process")
    assert torch.equal(torch.get_rng_state(), rng_before), "build_demo must not disturb the global RNG"
    # A second build in a fresh process, through the CLI.
    subprocess.run(
        [sys.executable, "-m", "studio.models", "build-demo", str(tmp_path / "cli")],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=120,
    )
    there = tmp_path / "cli"
    weights = sorted(p.relative_to(here) for p in here.rglob("*.safetensors"))
    assert [str(p) for p in weights] == [
        "text_encoder/model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    for relative in weights:
        assert _sha256(here / relative) == _sha256(there / relative), relative
    # Built atomically: nothing but the two finished folders is left behind, readable per the umask.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli", "in-process"]
    umask = fs.current_umask()
    assert (here / "unet").stat().st_mode & 0o777 == 0o777 & ~umask
    assert (here / weights[1]).stat().st_mode & 0o777 == 0o666 & ~umask
    index = json.loads((here / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False
    scheduler = json.loads((here / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "PNDMScheduler"
    assert (scheduler["beta_start"], scheduler["beta_end"], scheduler["beta_schedule"]) == (
        0.00085,
        0.012,
        "scaled_linear",
    )
    assert scheduler["skip_prk_steps"] is True and scheduler["steps_offset"] == 1


def test_build_demo_refuses_to_replace_a_foreign_folder(tmp_path):
    target = tmp_path / "precious"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        models.build_demo(target)
    assert (target / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious"]


def test_demo_model_dir_builds_once_under_concurrency(tmp_path, monkeypatch):
    """Parallel callers (threads here; flock also serialises processes) build the demo exactly once."""
    monkeypatch.setenv("STUDIO_CACHE", str(tmp_path / "cache"))
    builds = []

    def slow_fake_build(target: Path, inpaint: bool = False) -> Path:
        builds.append(target)
        time.sleep(0.3)  # long enough for the other threads to reach the lock
        tmp = target.with_name(".building")
        tmp.mkdir()
        (tmp / "model_index.json").write_text("{}")
        tmp.rename(target)
        return target

    monkeypatch.setattr(demo, "build_demo", slow_fake_build)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: models.demo_model_dir(), range(4)))
    assert builds == [tmp_path / "cache" / f"demo-{models.DEMO_VERSION}"]
    assert results == builds * 4
