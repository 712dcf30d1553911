"""Where a model comes from: the kinds of model source, discovery in a models folder, and name resolution.

`ModelKind` is the studio's one vocabulary for "what kind of model is this". `resolve_model` turns what a user
typed into a `ModelSource`; `serving_model` is the one rule by which every container entry point picks its model.
Nothing here touches weights or imports anything heavy.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from studio.engine import ModelLoadError

logger = logging.getLogger(__name__)

DEMO = "demo"
DEMO_INPAINT = "demo-inpaint"
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")


class ModelKind(StrEnum):
    """What kind of model a source is; decides how it is loaded and hashed."""

    DEMO = "demo"  # the built-in tiny model ("demo" or its 9-channel variant "demo-inpaint")
    DIFFUSERS = "diffusers"  # a diffusers folder (model_index.json)
    SINGLE_FILE = "single_file"  # an A1111-style .safetensors / .ckpt checkpoint
    HUB = "hub"  # a Hugging Face hub id "owner/name"


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from. A plain string `kind` is parsed into a ModelKind (ValueError if unknown)."""

    kind: ModelKind
    location: str  # a path, a hub id, or "demo" / "demo-inpaint"
    name: str  # display name: folder / file stem ("sub/stem" in a subfolder), hub id, or "demo"

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", ModelKind(self.kind))

    @property
    def is_demo(self) -> bool:
        return self.kind is ModelKind.DEMO

    def __str__(self) -> str:
        return self.name


DEMO_SOURCE = ModelSource(ModelKind.DEMO, DEMO, DEMO)
DEMO_INPAINT_SOURCE = ModelSource(ModelKind.DEMO, DEMO_INPAINT, DEMO_INPAINT)  # the demo's 9-channel variant


def _is_checkpoint_name(path: Path) -> bool:
    name = path.name.lower()
    # A1111 keeps a model's own VAE next to it as <model>.vae.safetensors / .vae.pt: not a model to list.
    return path.suffix.lower() in CHECKPOINT_SUFFIXES and not name.endswith((".vae.safetensors", ".vae.ckpt"))


def _scan(folder: Path, prefix: str, depth: int, found: list[ModelSource]) -> None:
    """Append the models in `folder` to `found`; plain subfolders are searched at depth 0 only."""
    try:
        entries = sorted(folder.iterdir())
    except OSError as err:
        logger.warning("cannot list %s: %s", folder, err)
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if (entry / "model_index.json").is_file():
                found.append(ModelSource(ModelKind.DIFFUSERS, str(entry.absolute()), prefix + entry.name))
            elif depth == 0:
                _scan(entry, f"{prefix}{entry.name}/", depth + 1, found)
        elif entry.is_file() and _is_checkpoint_name(entry):
            found.append(ModelSource(ModelKind.SINGLE_FILE, str(entry.absolute()), prefix + entry.stem))


def discover_models(models_dir: Path) -> list[ModelSource]:
    """Models dropped into `models_dir` (A1111-style): diffusers folders and .safetensors/.ckpt files.

    One level of plain subfolders is searched too; their models are named "<subfolder>/<name>".
    Sorted by name (case-insensitive). A missing folder yields an empty list.
    """
    root = Path(models_dir).expanduser()
    if not root.is_dir():
        return []
    found: list[ModelSource] = []
    _scan(root, "", 0, found)
    # x.safetensors and x.ckpt side by side would share a name: name those by their file name instead.
    counts: dict[str, int] = {}
    for source in found:
        counts[source.name] = counts.get(source.name, 0) + 1
    found = [
        ModelSource(s.kind, s.location, s.name + Path(s.location).suffix)
        if counts[s.name] > 1 and s.kind is ModelKind.SINGLE_FILE
        else s
        for s in found
    ]
    return sorted(found, key=lambda s: (s.name.lower(), s.name))


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def _looks_like_hub_id(spec: str) -> bool:
    if not _HUB_ID.match(spec) or ".." in spec or spec.lower().endswith(CHECKPOINT_SUFFIXES):
        return False
    # "models/foo" where ./models exists is a (missing) local path, not an organisation on the hub.
    return not Path(spec.split("/", 1)[0]).is_dir()


def _source_at_path(spec: str, models_dir: Path) -> tuple[ModelSource | None, str | None]:
    """The model at the path `spec` (absolute, else as given or relative to `models_dir`).

    Returns (source, None), or (None, why the existing path is not a model), or (None, None) when nothing exists.
    """
    path = Path(spec).expanduser()
    unsuitable: str | None = None
    for candidate in [path] if path.is_absolute() else [path, models_dir / path]:
        if candidate.is_dir():
            if (candidate / "model_index.json").is_file():
                return ModelSource(ModelKind.DIFFUSERS, str(candidate.absolute()), candidate.name), None
            unsuitable = unsuitable or (
                f"{spec}: this folder is not a diffusers model (it has no model_index.json). "
                "Point to a diffusers folder, or to a .safetensors/.ckpt file."
            )
        elif candidate.is_file():
            if candidate.suffix.lower() in CHECKPOINT_SUFFIXES:
                return ModelSource(ModelKind.SINGLE_FILE, str(candidate.absolute()), candidate.stem), None
            unsuitable = unsuitable or (
                f"{spec}: unsupported file type {candidate.suffix or '(none)'!r}; "
                "single-file models must be .safetensors or .ckpt"
            )
    return None, unsuitable


def resolve_model(spec: str | None, models_dir: Path) -> ModelSource:
    """Turn what the user typed (flag, env, UI) into a ModelSource; raise ModelLoadError if it names nothing.

    None/"" -> the first model in `models_dir`, else the demo; "demo" -> the demo ("demo-inpaint": its 9-channel
    inpainting variant); a diffusers folder or a .safetensors/.ckpt file (also relative to `models_dir`); the name
    of a discovered model; or a hub id "owner/name".
    """
    spec = (spec or "").strip()
    models_dir = Path(models_dir).expanduser()
    if not spec:
        found = discover_models(models_dir)
        if found:
            return found[0]
        logger.info("no models in %s; using the built-in demo model", models_dir)
        return DEMO_SOURCE
    if spec.lower() == DEMO:
        return DEMO_SOURCE
    if spec.lower() == DEMO_INPAINT:
        return DEMO_INPAINT_SOURCE

    at_path, unsuitable = _source_at_path(spec, models_dir)
    if at_path is not None:
        return at_path
    found = discover_models(models_dir)
    for source in found:
        if source.name == spec:
            return source
    folded = [s for s in found if s.name.lower() == spec.lower()]
    if len(folded) == 1:
        return folded[0]
    if unsuitable:
        raise ModelLoadError(unsuitable)
    if _looks_like_hub_id(spec):
        return ModelSource(ModelKind.HUB, spec, spec)

    names = ", ".join(s.name for s in found[:20]) or "none found"
    raise ModelLoadError(
        f"model {spec!r} not found. Accepted: 'demo' (the built-in tiny model; 'demo-inpaint' for inpainting); "
        f"a diffusers folder (with model_index.json); a .safetensors or .ckpt file; the name of a model in "
        f"{models_dir} ({names}); or a Hugging Face hub id like 'stable-diffusion-v1-5/stable-diffusion-v1-5'."
    )


# Next to the weights in a SageMaker model folder: the PyTorch toolkit's code/inference.py, and the LoRA, VAE and
# upscaler folders a deploy package carries (A1111's names; STUDIO_MODELS_DIR points the engine at them).
_IGNORED_MODEL_DIR_ENTRIES = ("code", "Lora", "VAE", "ESRGAN")


def model_in_dir(directory: Path) -> str | None:
    """The model inside a SageMaker-style model folder: None when it holds no files.

    A diffusers folder (model_index.json at the top or in one subfolder) or a single .safetensors/.ckpt file.
    Raises ModelLoadError when the folder has files but no recognisable model (never fall back to the demo then).
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    entries = sorted(
        p for p in directory.iterdir() if not p.name.startswith(".") and p.name not in _IGNORED_MODEL_DIR_ENTRIES
    )
    if not entries:
        return None
    if (directory / "model_index.json").is_file():
        return str(directory)
    checkpoints = [p for p in entries if p.is_file() and p.suffix.lower() in CHECKPOINT_SUFFIXES]
    if len(checkpoints) == 1:
        return str(checkpoints[0])
    if len(checkpoints) > 1:
        names = ", ".join(p.name for p in checkpoints)
        raise ModelLoadError(f"{directory} holds several checkpoints ({names}); set STUDIO_MODEL to the one to serve")
    folders = [p for p in entries if p.is_dir() and (p / "model_index.json").is_file()]
    if len(folders) == 1:
        return str(folders[0])
    shown = ", ".join(p.name for p in entries[:10])
    raise ModelLoadError(
        f"{directory} has files ({shown}) but no diffusers folder (model_index.json) or .safetensors/.ckpt file"
    )


def serving_model(explicit: str | None, model_dir: Path) -> str:
    """Which model a serving entry point (serving app, SageMaker toolkit handlers) serves — the one rule:

    1. `explicit`: --model, else STUDIO_MODEL (config.ServingSettings.engine.model);
    2. else the model in `model_dir` (SM_MODEL_DIR, default /opt/ml/model: where SageMaker unpacks model.tar.gz);
    3. else the built-in demo model (logged as a warning).
    """
    if explicit and explicit.strip():
        return explicit.strip()
    found = model_in_dir(model_dir)
    if found:
        return found
    logger.warning("no --model, STUDIO_MODEL or files in %s: serving the built-in demo model", model_dir)
    return DEMO
