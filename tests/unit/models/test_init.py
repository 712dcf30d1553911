"""studio.models (the package): light to import, and the public names stay importable from it."""

from __future__ import annotations

import subprocess
import sys

from studio.testing.servers import REPO


def test_importing_studio_models_is_light():
    heavy = "('torch', 'diffusers', 'transformers', 'safetensors')"
    code = f"import sys, studio.models; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def test_public_names_are_importable_from_the_package():
    import studio.models

    public = (
        "ModelSource ModelKind DEMO DEMO_SOURCE DEMO_INPAINT DEMO_INPAINT_SOURCE CHECKPOINT_SUFFIXES discover_models "
        "resolve_model model_in_dir serving_model load_pipeline is_inpaint_unet model_hash build_demo demo_model_dir "
        "clip_tokenizer save_pipeline_dir shipped_config_dir checkpoint_shapes checkpoint_config_type "
        "single_file_config_dir CONFIG_DESCRIPTIONS"
    ).split()
    assert [name for name in public if not hasattr(studio.models, name)] == []
    assert set(public) <= set(studio.models.__all__)
