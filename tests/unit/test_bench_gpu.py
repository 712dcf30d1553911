"""bench/gpu.py without a GPU: the section reports itself skipped, and its measuring pieces (tuned copies, the
interleaved comparison, the batched-CFG check, the peak fraction) run on the demo model on the CPU, so a GPU host's
first run does not find a trivial bug."""

from __future__ import annotations

import pytest
import torch

from bench import gpu
from studio.engines.local import LocalEngine
from studio.engines.tuning import Tuning
from studio.types import Task


@pytest.fixture(scope="module")
def plain():
    engine = LocalEngine("demo", device="cpu")
    engine.load()
    pipe = engine.pipelines[Task.TXT2IMG]
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_without_cuda_the_section_is_skipped(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = gpu.run(quick=True)
    assert out == {"skipped": "no CUDA GPU (torch.cuda.is_available() is False)", "speedup": None}


def test_a_variant_is_a_tuned_copy_that_leaves_plain_alone(plain):
    fast = gpu.variant(plain, Tuning(channels_last=True), "cpu")
    assert fast.unet is not plain.unet and fast.text_encoder is plain.text_encoder
    assert fast.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert plain.unet.conv_in.weight.is_contiguous()


def test_compare_interleaves_and_reports_speedups(plain):
    fused = gpu.variant(plain, Tuning(fuse_qkv=True), "cpu")
    row = gpu.compare({"plain": (plain, Tuning()), "fuse_qkv": (fused, Tuning(fuse_qkv=True))}, 1, 2, 64, 2, "cpu")
    for name in ("plain", "fuse_qkv"):
        assert row[f"{name}_its"]["n"] == 2 and row[f"{name}_its"]["median"] > 0
        assert row[f"{name}_images_per_s"]["median"] > 0
    assert row["fuse_qkv_speedup"] > 0
    spread = row["fuse_qkv_speedup_spread"]
    assert spread["round_ratio_min"] <= row["fuse_qkv_speedup"] <= spread["round_ratio_max"]
    assert "plain_speedup" not in row


def test_batched_cfg_is_checked_not_assumed(plain):
    assert gpu.cfg_batching(plain, "cpu") == {"batched": True, "unet_calls_per_step": 1.0, "unet_batch": 2}


def test_peak_fraction():
    assert gpu.peak_fraction(1.6, 10.0, 32.0) == 0.5  # 1.6 TFLOP per step x 10 it/s = 16 TFLOPS of a 32 TFLOPS peak
