"""studio.models.hashing: A1111's model hash, cached by path, mtime and size."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from studio import models
from studio.models import ModelSource


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_model_hash_of_a_diffusers_folder_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    (folder / "unet").mkdir(parents=True)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"weights v1")
    source = ModelSource("diffusers", str(folder), "model")
    assert models.model_hash(source) == hashlib.sha256(b"weights v1").hexdigest()[:10]
    cache = json.loads((tmp_path / "cache" / "hashes.json").read_text())
    assert [entry["sha256"] for entry in cache.values()] == [hashlib.sha256(b"weights v1").hexdigest()]
    weights.write_bytes(b"weights v2 changed")  # new size and mtime: hashed again
    assert models.model_hash(source) == hashlib.sha256(b"weights v2 changed").hexdigest()[:10]
    assert models.model_hash(ModelSource("diffusers", str(tmp_path / "nothing"), "nothing")) == ""


def test_demo_hash_is_its_unet_weights():
    unet = models.demo_model_dir() / "unet" / "diffusion_pytorch_model.safetensors"
    assert models.model_hash(models.DEMO_SOURCE) == _sha256(unet)[:10]
