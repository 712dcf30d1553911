"""Models: where they come from, how they are loaded offline, the built-in demo model, and their hashes.

- `sources`: ModelKind (the one vocabulary for model kinds), ModelSource, discovery in a models folder,
  resolve_model, and serving_model — the one rule by which a container picks its model;
- `tokenizer`: the CLIP tokenizer built offline from the openai-clip wheel;
- `single_file`: A1111-style .safetensors/.ckpt files (safe unpickling, family detection, shipped configs);
- `demo`: the tiny deterministic demo model, and the atomic diffusers-folder writer;
- `loading`: ModelSource -> diffusers pipeline;
- `hashing`: A1111's "Model hash";
- `lora`, `vae`: LoRA files in MODELS_DIR/Lora and VAE files in MODELS_DIR/VAE (A1111's folders): discovery, A1111's
  "Lora hashes" / "VAE hash", safe loading (studio.engines.adapters applies them per request);
- `demo_extras`: a demo LoRA and a demo VAE, so both can be tried and tested offline.

Importing this package is light: torch, diffusers and transformers are imported only when a function needs them.
CLI: ``python -m studio.models build-demo DIR [--inpaint]``, ``build-demo-lora PATH.safetensors``,
``build-demo-vae PATH.safetensors`` and ``list [MODELS_DIR]``.
"""

from studio.models.demo import DEMO_VERSION, build_demo, demo_model_dir, save_pipeline_dir
from studio.models.hashing import model_hash
from studio.models.loading import is_inpaint_unet, load_pipeline, single_file_config_dir
from studio.models.single_file import (
    CONFIG_DESCRIPTIONS,
    CONFIGS_DIR,
    checkpoint_config_type,
    checkpoint_shapes,
    shipped_config_dir,
)
from studio.models.sources import (
    CHECKPOINT_SUFFIXES,
    DEMO,
    DEMO_INPAINT,
    DEMO_INPAINT_SOURCE,
    DEMO_SOURCE,
    ModelKind,
    ModelSource,
    discover_models,
    model_in_dir,
    resolve_model,
    serving_model,
)
from studio.models.tokenizer import clip_tokenizer

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "CONFIG_DESCRIPTIONS",
    "CONFIGS_DIR",
    "DEMO",
    "DEMO_INPAINT",
    "DEMO_INPAINT_SOURCE",
    "DEMO_SOURCE",
    "DEMO_VERSION",
    "ModelKind",
    "ModelSource",
    "build_demo",
    "checkpoint_config_type",
    "checkpoint_shapes",
    "clip_tokenizer",
    "demo_model_dir",
    "discover_models",
    "is_inpaint_unet",
    "load_pipeline",
    "model_hash",
    "model_in_dir",
    "resolve_model",
    "save_pipeline_dir",
    "serving_model",
    "shipped_config_dir",
    "single_file_config_dir",
]
