"""Fixtures shared by the studio.models tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def models_folder(tmp_path: Path) -> Path:
    """tmp_path/models, A1111-style: models at the top and one subfolder deep, plus things that are not models."""
    root = tmp_path / "models"
    (root / "my-diffusers").mkdir(parents=True)
    (root / "my-diffusers" / "model_index.json").write_text("{}")
    (root / "alpha.safetensors").write_bytes(b"x")
    (root / "Beta.ckpt").write_bytes(b"x")
    (root / "alpha.vae.safetensors").write_bytes(b"x")  # a sidecar VAE, not a model
    (root / "readme.txt").write_text("not a model")
    (root / ".hidden.safetensors").write_bytes(b"x")
    (root / "sdxl").mkdir()
    (root / "sdxl" / "gamma.safetensors").write_bytes(b"x")
    (root / "sdxl" / "deeper").mkdir()
    (root / "sdxl" / "deeper" / "too-deep.safetensors").write_bytes(b"x")
    (root / "empty-folder").mkdir()
    return root
