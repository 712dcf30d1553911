"""Model sources: the built-in demo model, diffusers folders, single-file checkpoints and hub ids.

Everything here works offline. Single-file checkpoints (A1111-style .safetensors / .ckpt) are loaded with the
published diffusers configs shipped in ``studio/configs`` plus a CLIP tokenizer built from the BPE file inside the
``openai-clip`` wheel, so no hub access is ever needed. ``.ckpt`` files are only unpickled with
``torch.load(weights_only=True)``: a checkpoint that carries code is refused before anything else touches it.

Nothing heavy is imported at module import time (torch, diffusers and transformers are imported inside functions).

CLI::

    python -m studio.models build-demo DIR [--inpaint]
    python -m studio.models list [MODELS_DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studio.engine import ModelLoadError

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline
    from transformers import CLIPTokenizer

logger = logging.getLogger(__name__)

DEMO = "demo"
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"

# Bump when the demo architecture or weights change, so old caches are not reused.
DEMO_VERSION = "v1"
_DEMO_WIDTH = 32  # output channels of the demo UNet's conv_in; real SD models have 320
_EOT = "<|endoftext|>"

# diffusers' infer_diffusers_model_type() name -> the config folder shipped in studio/configs.
_CONFIG_FOR_MODEL_TYPE = {
    "v1": "sd-v1",
    "inpainting": "sd-v1-inpainting",
    "v2": "sd-v2-768-v",  # or sd-v2-base: decided by a sidecar .yaml, see _sd2_config()
    "inpainting_v2": "sd-v2-inpainting",
    "xl_base": "sdxl-base",
    "xl_inpaint": "sdxl-inpainting",
}
# Pad token per tokenizer folder: SD 1.x pads with <|endoftext|>; OpenCLIP ones (SD 2.x, SDXL tokenizer_2) with "!".
_TOKENIZER_PADS = {
    "sd-v1": {"tokenizer": _EOT},
    "sd-v1-inpainting": {"tokenizer": _EOT},
    "sd-v2-768-v": {"tokenizer": "!"},
    "sd-v2-base": {"tokenizer": "!"},
    "sd-v2-inpainting": {"tokenizer": "!"},
    "sdxl-base": {"tokenizer": _EOT, "tokenizer_2": "!"},
    "sdxl-inpainting": {"tokenizer": _EOT, "tokenizer_2": "!"},
}
CONFIG_DESCRIPTIONS = {
    "demo": "built-in tiny demo model",
    "demo-inpaint": "built-in tiny demo model, inpainting (9-channel UNet)",
    "sd-v1": "Stable Diffusion 1.x",
    "sd-v1-inpainting": "Stable Diffusion 1.x inpainting",
    "sd-v2-768-v": "Stable Diffusion 2.x 768 (v-prediction)",
    "sd-v2-base": "Stable Diffusion 2.x base 512 (epsilon)",
    "sd-v2-inpainting": "Stable Diffusion 2.x inpainting",
    "sdxl-base": "Stable Diffusion XL base",
    "sdxl-inpainting": "Stable Diffusion XL inpainting",
}


# ---------------------------------------------------------------------------------------------------------------------
# Sources


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from. `kind` is "demo", "diffusers", "single_file" or "hub"."""

    kind: str
    location: str  # a path, a hub id, or "demo" / "demo-inpaint"
    name: str  # display name: folder / file stem ("sub/stem" in a subfolder), hub id, or "demo"

    @property
    def is_demo(self) -> bool:
        return self.kind == DEMO

    def __str__(self) -> str:
        return self.name


DEMO_SOURCE = ModelSource(DEMO, DEMO, DEMO)
DEMO_INPAINT = "demo-inpaint"
DEMO_INPAINT_SOURCE = ModelSource(DEMO, DEMO_INPAINT, DEMO_INPAINT)  # the demo's 9-channel inpainting variant


def cache_dir() -> Path:
    """The studio's cache folder: $STUDIO_CACHE, else ~/.cache/sd-studio (created on demand by the callers)."""
    return Path(os.environ.get("STUDIO_CACHE") or "~/.cache/sd-studio").expanduser()


def _is_checkpoint_name(path: Path) -> bool:
    name = path.name.lower()
    # A1111 keeps a model's own VAE next to it as <model>.vae.safetensors / .vae.pt: not a model to list.
    return path.suffix.lower() in CHECKPOINT_SUFFIXES and not name.endswith((".vae.safetensors", ".vae.ckpt"))


def discover_models(models_dir: Path) -> list[ModelSource]:
    """Models dropped into `models_dir` (A1111-style): diffusers folders and .safetensors/.ckpt files.

    One level of plain subfolders is searched too; their models are named "<subfolder>/<name>".
    Sorted by name (case-insensitive). A missing folder yields an empty list.
    """
    root = Path(models_dir).expanduser()
    if not root.is_dir():
        return []
    found: list[ModelSource] = []

    def scan(folder: Path, prefix: str, depth: int) -> None:
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
                    found.append(ModelSource("diffusers", str(entry.absolute()), prefix + entry.name))
                elif depth == 0:
                    scan(entry, f"{prefix}{entry.name}/", depth + 1)
            elif entry.is_file() and _is_checkpoint_name(entry):
                found.append(ModelSource("single_file", str(entry.absolute()), prefix + entry.stem))

    scan(root, "", 0)
    # x.safetensors and x.ckpt side by side would share a name: name those by their file name instead.
    counts: dict[str, int] = {}
    for source in found:
        counts[source.name] = counts.get(source.name, 0) + 1
    found = [
        ModelSource(s.kind, s.location, s.name + Path(s.location).suffix)
        if counts[s.name] > 1 and s.kind == "single_file"
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

    path = Path(spec).expanduser()
    unsuitable: str | None = None  # an existing path that is not a model; reported unless a model name matches
    for candidate in [path] if path.is_absolute() else [path, models_dir / path]:
        if candidate.is_dir():
            if (candidate / "model_index.json").is_file():
                return ModelSource("diffusers", str(candidate.absolute()), candidate.name)
            unsuitable = unsuitable or (
                f"{spec}: this folder is not a diffusers model (it has no model_index.json). "
                "Point to a diffusers folder, or to a .safetensors/.ckpt file."
            )
        elif candidate.is_file():
            if candidate.suffix.lower() in CHECKPOINT_SUFFIXES:
                return ModelSource("single_file", str(candidate.absolute()), candidate.stem)
            unsuitable = unsuitable or (
                f"{spec}: unsupported file type {candidate.suffix or '(none)'!r}; "
                "single-file models must be .safetensors or .ckpt"
            )

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
        return ModelSource("hub", spec, spec)

    names = ", ".join(s.name for s in found[:20]) or "none found"
    raise ModelLoadError(
        f"model {spec!r} not found. Accepted: 'demo' (the built-in tiny model; 'demo-inpaint' for inpainting); "
        f"a diffusers folder (with model_index.json); a .safetensors or .ckpt file; the name of a model in "
        f"{models_dir} ({names}); or a Hugging Face hub id like 'stable-diffusion-v1-5/stable-diffusion-v1-5'."
    )


# ---------------------------------------------------------------------------------------------------------------------
# Files: locks and atomic folder writes


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive fcntl lock on `path` (created if needed), so parallel processes build a cache entry once."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _publish_dir(tmp: Path, target: Path) -> None:
    """Move the finished folder `tmp` to `target` with a rename, so readers never see a half-written folder.

    An existing model folder at `target` is replaced; an empty folder is removed first; any other existing
    content is refused rather than deleted.
    """
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
    if target.exists():
        if not (target / "model_index.json").is_file():
            raise FileExistsError(f"{target} exists and is not a model folder; not replacing it")
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.rename(target, old)
        os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, target)


def save_pipeline_dir(pipe: Any, target: Path) -> Path:
    """Write `pipe` as a diffusers folder (safetensors) at `target` atomically: readers never see half a model."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        _apply_umask(tmp)
        _publish_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _current_umask() -> int:
    try:  # Linux: read it without changing it (os.umask would briefly change it for all threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _apply_umask(tree: Path) -> None:
    """mkdtemp/mkstemp create private (0700/0600) entries; give the finished tree the usual umask-based modes
    so e.g. a demo built as root in a container image stays readable by the serving user."""
    umask = _current_umask()
    tree.chmod(0o777 & ~umask)
    for path in tree.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _atomic_write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------------------
# Which model a container serves (one rule for every entry point)

_IGNORED_MODEL_DIR_ENTRIES = ("code",)  # the PyTorch toolkit's code/inference.py lives next to the weights


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


# ---------------------------------------------------------------------------------------------------------------------
# CLIP tokenizer (offline)


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable character table (same order as CLIP's simple_tokenizer)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def _clip_bpe_file() -> Path:
    spec = importlib.util.find_spec("clip")  # locate only: importing the openai-clip package fails here
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("the CLIP tokenizer vocabulary is missing: install the openai-clip package")
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise ModelLoadError(f"the CLIP tokenizer vocabulary is missing: {path} does not exist")
    return path


def _clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's 49,408-token vocabulary and 48,894 merges, built exactly as CLIP's own tokenizer builds them."""
    with gzip.open(_clip_bpe_file()) as handle:
        lines = handle.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", _EOT]
    return {token: i for i, token in enumerate(tokens)}, merges  # type: ignore[return-value]


def _clip_tokenizer_dir() -> Path:
    """cache_dir()/clip-tokenizer: the tokenizer saved once (tokenizer.json, plus vocab.json and merges.txt)."""
    folder = cache_dir() / "clip-tokenizer"
    if (folder / "tokenizer.json").is_file():
        return folder
    with file_lock(folder.with_name("clip-tokenizer.lock")):
        if (folder / "tokenizer.json").is_file():
            return folder
        from transformers import CLIPTokenizer

        vocab, merges = _clip_vocab_and_merges()
        tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
        tmp = Path(tempfile.mkdtemp(prefix=".clip-tokenizer.tmp-", dir=folder.parent))
        try:
            tokenizer.save_pretrained(tmp)
            (tmp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
            (tmp / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
            _apply_umask(tmp)
            if folder.exists():  # an incomplete leftover
                shutil.rmtree(folder)
            os.rename(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return folder


def clip_tokenizer(pad_token: str = _EOT) -> CLIPTokenizer:
    """The real CLIP BPE tokenizer (SD's), built offline from the openai-clip wheel and cached in cache_dir().

    SD 1.x pads with "<|endoftext|>"; SD 2.x and SDXL's second tokenizer pad with "!".
    """
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(_clip_tokenizer_dir()), pad_token=pad_token, model_max_length=77)


# ---------------------------------------------------------------------------------------------------------------------
# The demo model


def _read_shipped_json(config: str, relative: str) -> dict[str, Any]:
    return json.loads((CONFIGS_DIR / config / relative).read_text())


def build_demo(target: Path, inpaint: bool = False) -> Path:
    """Write the tiny SD 1.x-shaped demo pipeline as a diffusers folder at `target` and return `target`.

    Weights are random but deterministic (each component is created under its own fixed seed), so every
    process writes byte-identical safetensors. The folder is built next to `target` and renamed into place.
    `inpaint=True` gives a dedicated inpainting variant (9-channel UNet).
    """
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    target = Path(target).expanduser().absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tokenizer = clip_tokenizer()
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG alone
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            block_out_channels=(_DEMO_WIDTH, 64),
            layers_per_block=2,
            sample_size=32,  # latent size: 256 px default
            in_channels=9 if inpaint else 4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
        )
        torch.manual_seed(1)
        # 4 blocks so the VAE scale factor is 8 like real SD (2 blocks would make 256 px latents 128x128: slow).
        vae = AutoencoderKL(
            block_out_channels=(32, 32, 64, 64),
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            sample_size=256,
        )
        torch.manual_seed(2)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                bos_token_id=0,
                eos_token_id=2,
                pad_token_id=1,
                hidden_size=32,
                intermediate_size=37,
                layer_norm_eps=1e-05,
                num_attention_heads=4,
                num_hidden_layers=5,
                vocab_size=len(tokenizer),
                max_position_embeddings=77,
                projection_dim=32,
            )
        )
    scheduler = PNDMScheduler.from_config(_read_shipped_json("sd-v1", "scheduler/scheduler_config.json"))
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    save_pipeline_dir(pipe, target)
    logger.info(
        "built the %sdemo model in %s (%.1fs)", "inpainting " if inpaint else "", target, time.perf_counter() - started
    )
    return target


def demo_model_dir(inpaint: bool = False) -> Path:
    """The demo model's folder in the cache, built on first use (under a file lock) and reused afterwards."""
    target = cache_dir() / (f"demo-inpaint-{DEMO_VERSION}" if inpaint else f"demo-{DEMO_VERSION}")
    if (target / "model_index.json").is_file():
        return target
    with file_lock(target.with_name(target.name + ".lock")):
        if not (target / "model_index.json").is_file():
            build_demo(target, inpaint=inpaint)
    return target


# ---------------------------------------------------------------------------------------------------------------------
# Single-file checkpoints


class _IgnoredPickledObject:
    """Stand-in for harmless training objects some .ckpt files carry (e.g. a Lightning ModelCheckpoint)."""

    def __setstate__(self, state: Any) -> None:  # the state is dropped: only the weights matter
        pass


def _ckpt_safe_globals() -> list[Any]:
    """Extra globals allowed by torch.load(weights_only=True): numpy scalars/arrays (global_step etc.) and stand-ins.

    None of these run code from the file: they build numbers, arrays and dtypes, or a do-nothing placeholder.
    """
    import numpy as np

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    allowed: list[Any] = [np.dtype, np.ndarray]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed += [(multiarray.scalar, f"{module}.scalar"), (multiarray._reconstruct, f"{module}._reconstruct")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, name) for name in dir(dtypes) if name.endswith("DType")]
    allowed.append((_IgnoredPickledObject, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"))
    return allowed


def _load_ckpt(path: Path) -> dict[str, Any]:
    """Unpickle a .ckpt with weights_only=True (tensors memory-mapped when possible) and return its state dict.

    Pickled code (anything but tensors, containers, numbers and the allowed globals) raises ModelLoadError and is
    never executed.
    """
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals(_ckpt_safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        # torch wraps the reason in a long help text; keep the "WeightsUnpickler error: ..." part.
        found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", str(err), re.S)
        reason = " ".join((found.group(1) if found else str(err)).split())
        if not re.search(r"GLOBAL|unrecognized function|Can only (create|build)|blocked|allowlist", reason):
            raise ModelLoadError(f"{path.name}: not a readable .ckpt checkpoint ({reason})") from None
        culprit = re.search(r"GLOBAL (\S+)", reason) or re.search(r"function (.+?)(?: which|$)", reason)
        detail = f"it references {culprit.group(1)}" if culprit else reason
        raise ModelLoadError(
            f"{path.name}: refused to load: the checkpoint contains pickled code that is not plain tensors "
            f"({detail}). Use a .safetensors version of this model."
        ) from None
    except Exception as err:
        raise ModelLoadError(f"{path.name}: not a readable .ckpt checkpoint ({type(err).__name__}: {err})") from err
    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{path.name}: not a model checkpoint (it holds a {type(obj).__name__}, not weights)")
    return obj


def checkpoint_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a single-file checkpoint, without loading safetensors weights."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
        except Exception as err:
            raise ModelLoadError(f"{path.name}: not a valid .safetensors file ({err})") from err
    import torch

    state = _load_ckpt(path)
    return {key: tuple(value.shape) for key, value in state.items() if isinstance(value, torch.Tensor)}


def _sd2_config(path: Path) -> str:
    """SD 2.x 768 (v-prediction) or 512 base (epsilon): the weights look the same, so use an A1111 sidecar yaml.

    <model>.yaml next to the file with `parameterization: "v"` -> v-prediction; a yaml without it -> the 512
    epsilon base; no yaml -> v-prediction (SD 2.0/2.1 768, what diffusers also assumes).
    """
    sidecar = path.with_suffix(".yaml")
    if not sidecar.is_file():
        return "sd-v2-768-v"
    text = sidecar.read_text(errors="replace")
    return "sd-v2-768-v" if re.search(r"parameterization:\s*[\"']?v[\"']?\s*$", text, re.M) else "sd-v2-base"


def checkpoint_config_type(path: Path, shapes: dict[str, tuple[int, ...]] | None = None) -> str:
    """Which config a single-file checkpoint needs: "demo", "demo-inpaint" or a folder name in studio/configs.

    Decided from tensor names and shapes with diffusers' infer_diffusers_model_type; unsupported families
    (LoRA, VAE, SD3, Flux, refiner, ...) raise ModelLoadError naming what was found.
    """
    path = Path(path)
    shapes = checkpoint_shapes(path) if shapes is None else shapes
    conv_in = shapes.get("model.diffusion_model.input_blocks.0.0.weight")
    if conv_in is None or len(conv_in) != 4:
        raise ModelLoadError(
            f"{path.name}: not a Stable Diffusion checkpoint (no UNet weights model.diffusion_model.*). "
            "It may be a LoRA, a VAE, an embedding or another model family; single files of SD 1.x, SD 2.x and "
            "SDXL are supported."
        )
    if conv_in[0] == _DEMO_WIDTH:
        return "demo-inpaint" if conv_in[1] == 9 else "demo"

    import torch
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    meta = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    model_type = infer_diffusers_model_type(meta)
    config = _CONFIG_FOR_MODEL_TYPE.get(model_type)
    if config is None or conv_in[0] != 320 or conv_in[1] not in (4, 9):
        raise ModelLoadError(
            f"{path.name}: this looks like a {model_type!r} checkpoint (UNet input {conv_in[1]} channels, width "
            f"{conv_in[0]}), which the studio cannot load as a single file. Supported: SD 1.x, SD 2.x, SDXL base "
            "and their inpainting variants. Convert other models to a diffusers folder."
        )
    if config == "sd-v2-768-v":
        config = _sd2_config(path)
    return config


def shipped_config_dir(config: str) -> Path:
    """A complete diffusers config folder (JSON from studio/configs + CLIP tokenizers) in the cache, built once."""
    shipped = CONFIGS_DIR / config
    if not (shipped / "model_index.json").is_file():
        raise ModelLoadError(f"no shipped config {config!r} in {CONFIGS_DIR}")
    digest = hashlib.sha256()
    files = sorted(p for p in shipped.rglob("*.json"))
    for file in files:
        digest.update(str(file.relative_to(shipped)).encode() + b"\0" + file.read_bytes())
    target = cache_dir() / "configs" / f"{config}-{digest.hexdigest()[:12]}"
    if (target / "model_index.json").is_file():
        return target
    with file_lock(target.with_name(target.name + ".lock")):
        if (target / "model_index.json").is_file():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            for file in files:
                dest = tmp / file.relative_to(shipped)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(file, dest)
            for folder, pad in _TOKENIZER_PADS[config].items():
                clip_tokenizer(pad_token=pad).save_pretrained(tmp / folder)
            _apply_umask(tmp)
            if target.exists():
                shutil.rmtree(target)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def single_file_config_dir(path: Path, shapes: dict[str, tuple[int, ...]] | None = None) -> tuple[str, Path]:
    """(config type, local diffusers config folder) for loading the checkpoint at `path` fully offline."""
    config = checkpoint_config_type(path, shapes)
    if config in ("demo", "demo-inpaint"):
        return config, demo_model_dir(inpaint=config == "demo-inpaint")
    return config, shipped_config_dir(config)


# ---------------------------------------------------------------------------------------------------------------------
# Loading


def _torch_dtype(dtype: Any) -> Any:
    if dtype is None or not isinstance(dtype, str):
        return dtype
    import torch

    value = getattr(torch, dtype.removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ModelLoadError(f"unknown dtype {dtype!r}; use float32, float16 or bfloat16")
    return value


def _safety_kwargs(model_index: dict[str, Any]) -> dict[str, Any]:
    # Skip loading a safety checker at all (SD 1.x folders ship one); pipelines without one take no such argument.
    if "safety_checker" in model_index:
        return {"safety_checker": None, "requires_safety_checker": False}
    return {}


def _load_pretrained(location: str, dtype: Any, local_files_only: bool) -> DiffusionPipeline:
    from diffusers import AutoPipelineForText2Image, DiffusionPipeline

    model_index = DiffusionPipeline.load_config(location, local_files_only=local_files_only)
    kwargs: dict[str, Any] = {"local_files_only": local_files_only, **_safety_kwargs(model_index)}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        # Maps inpainting / img2img folders (e.g. StableDiffusionInpaintPipeline) to their text-to-image class.
        return AutoPipelineForText2Image.from_pretrained(location, **kwargs)
    except ValueError as err:
        if "AutoPipeline can't find a pipeline" not in str(err):
            raise
        logger.info(
            "%s: no text-to-image AutoPipeline for %s; loading it as is", location, model_index.get("_class_name")
        )
        return DiffusionPipeline.from_pretrained(location, **kwargs)


def _load_single_file(path: Path, dtype: Any) -> DiffusionPipeline:
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if not path.is_file():
        raise ModelLoadError(f"{path}: file not found")
    # Reading the shapes also validates a .ckpt: pickled code is refused before diffusers opens the file.
    shapes = checkpoint_shapes(path)
    config, config_dir = single_file_config_dir(path, shapes)
    logger.info("%s: single-file %s, config %s", path.name, CONFIG_DESCRIPTIONS.get(config, config), config_dir)
    pipeline_class = StableDiffusionXLPipeline if config.startswith("sdxl") else StableDiffusionPipeline
    kwargs: dict[str, Any] = {"config": str(config_dir), "local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    # diffusers also unpickles .ckpt with weights_only=True; allow the same harmless numpy globals there.
    with torch.serialization.safe_globals(_ckpt_safe_globals()):
        return pipeline_class.from_single_file(str(path), **kwargs)


def _hub_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return flag or bool(constants.HF_HUB_OFFLINE)


def _hub_cached_file(repo_id: str, filename: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename)
    except Exception:  # malformed ids etc.: treat as not cached
        return None
    return found if isinstance(found, str) else None


def _hub_not_cached_error(repo_id: str, reason: str) -> ModelLoadError:
    from huggingface_hub import constants

    return ModelLoadError(
        f"{repo_id}: this Hugging Face hub model is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) "
        f"and {reason}. To use it, download it on a connected machine (`hf download {repo_id}`) and copy the "
        "cache here, unset HF_HUB_OFFLINE on a machine with network access, or put a .safetensors/.ckpt file or "
        "a diffusers folder in the models folder (./models)."
    )


def _load_hub(repo_id: str, dtype: Any) -> DiffusionPipeline:
    cached = _hub_cached_file(repo_id, "model_index.json") is not None
    if not cached and _hub_offline():
        raise _hub_not_cached_error(repo_id, "there is no network access (HF_HUB_OFFLINE is set)")
    try:
        return _load_pretrained(repo_id, dtype, local_files_only=_hub_offline())
    except ModelLoadError:
        raise
    except Exception as err:
        text = f"{type(err).__name__}: {err}"
        if not cached and re.search(r"connect|resolve|network|timed? ?out|offline|local cache", text, re.I):
            raise _hub_not_cached_error(repo_id, "the hub could not be reached (no network?)") from err
        raise


def load_pipeline(source: ModelSource, device: str = "cpu", dtype: Any = None) -> DiffusionPipeline:
    """Load the text-to-image pipeline for `source` on `device` (safety checker off, progress bar off).

    SD 1.x/2.x give a StableDiffusionPipeline, SDXL a StableDiffusionXLPipeline. Derive img2img/inpaint with
    from_pipe. Every failure is a ModelLoadError naming the model and the reason.
    """
    started = time.perf_counter()
    try:
        torch_dtype = _torch_dtype(dtype)
        if source.kind == DEMO:
            folder = demo_model_dir(inpaint=source.location == DEMO_INPAINT)
            pipe = _load_pretrained(str(folder), torch_dtype, local_files_only=True)
        elif source.kind == "diffusers":
            folder = Path(source.location)
            if not (folder / "model_index.json").is_file():
                raise ModelLoadError(f"{source.name}: {folder} is not a diffusers folder (no model_index.json)")
            pipe = _load_pretrained(str(folder), torch_dtype, local_files_only=True)
        elif source.kind == "single_file":
            pipe = _load_single_file(Path(source.location), torch_dtype)
        elif source.kind == "hub":
            pipe = _load_hub(source.location, torch_dtype)
        else:
            raise ModelLoadError(f"{source.name}: unknown model kind {source.kind!r}")
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
    except ModelLoadError:
        raise
    except Exception as err:
        raise ModelLoadError(f"{source.name}: could not load the model ({type(err).__name__}: {err})") from err
    logger.info(
        "loaded %s (%s) on %s in %.1fs", source.name, type(pipe).__name__, device, time.perf_counter() - started
    )
    return pipe


def is_inpaint_unet(pipe: Any) -> bool:
    """True for a dedicated inpainting model (9-channel UNet): it can only inpaint."""
    unet = getattr(pipe, "unet", None)
    return unet is not None and getattr(unet.config, "in_channels", 4) == 9


# ---------------------------------------------------------------------------------------------------------------------
# Hashes


def _unet_weight_files(folder: Path) -> list[Path]:
    unet = folder / "unet"
    for name in (
        "diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model.fp16.safetensors",
        "diffusion_pytorch_model.bin",
    ):
        if (unet / name).is_file():
            return [unet / name]
    shards = sorted(unet.glob("*.safetensors")) or sorted(unet.glob("*.bin"))
    return shards


def _sha256_files(files: list[Path]) -> str:
    """sha256 over `files` (streamed, in order), cached in cache_dir()/hashes.json by path + mtime + size."""
    stats = [f.stat() for f in files]
    key = "|".join(str(f.resolve()) for f in files)
    stamp = [[s.st_mtime_ns, s.st_size] for s in stats]
    index_path = cache_dir() / "hashes.json"
    try:
        entry = json.loads(index_path.read_text()).get(key)
    except (OSError, ValueError):
        entry = None
    if entry and entry.get("stamp") == stamp:
        return entry["sha256"]
    started = time.perf_counter()
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    value = digest.hexdigest()
    logger.info("hashed %s in %.1fs", ", ".join(f.name for f in files), time.perf_counter() - started)
    with file_lock(index_path.with_name("hashes.json.lock")):
        try:
            index = json.loads(index_path.read_text())
        except (OSError, ValueError):
            index = {}
        index[key] = {"stamp": stamp, "sha256": value}
        _atomic_write_json(index_path, index)
    return value


def model_hash(source: ModelSource) -> str:
    """A1111's "Model hash": the first 10 hex digits of a sha256 ("" when nothing local can be hashed).

    Single file: of the file. Diffusers folder / demo / cached hub model: of the UNet weights.
    """
    if source.kind == "single_file":
        files = [Path(source.location)]
    elif source.kind == "diffusers":
        files = _unet_weight_files(Path(source.location))
    elif source.kind == DEMO:
        files = _unet_weight_files(demo_model_dir(inpaint=source.location == DEMO_INPAINT))
    elif source.kind == "hub":
        cached = _hub_cached_file(source.location, "unet/diffusion_pytorch_model.safetensors")
        files = [Path(cached)] if cached else []
    else:
        files = []
    files = [f for f in files if f.is_file()]
    return _sha256_files(files)[:10] if files else ""


# ---------------------------------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studio.models", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build-demo", help="write the tiny demo model as a diffusers folder")
    build.add_argument("dir", type=Path)
    build.add_argument("--inpaint", action="store_true", help="the 9-channel inpainting variant")
    listing = commands.add_parser("list", help="list the models found in a models folder")
    listing.add_argument("models_dir", type=Path, nargs="?", default=Path("models"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "build-demo":
            print(build_demo(args.dir, inpaint=args.inpaint))
        else:
            found = discover_models(args.models_dir)
            for source in found:
                print(f"{source.name}\t{source.kind}\t{source.location}")
            if not found:
                print(f"no models in {args.models_dir} (the studio will use the built-in demo model)", file=sys.stderr)
    except (ModelLoadError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
