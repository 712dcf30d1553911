"""The hires-fix upscalers by A1111's names, and the ESRGAN-family model files found in the models folder.

Light on purpose (no torch): the UI lists the names and `GenerationRequest` users check them without loading the
engine. What each kind does (studio.engines.hires runs them; A1111 1.9's behaviour, read from its docs and code):

- the six ``Latent`` upscalers interpolate the first pass's *latents* (torch ``interpolate``; no VAE round trip).
  Their mode/antialias pairs are A1111's: bilinear, bilinear+antialias, bicubic, bicubic+antialias, nearest,
  nearest-exact. Antialiasing only changes a bilinear result when the latents shrink (a resize smaller than the
  first pass); bicubic's antialiased kernel differs when enlarging too.
- ``None``, ``Lanczos`` and ``Nearest`` decode the first pass, resize the image with PIL and encode it again.
  ``None`` is not "no upscale": in A1111 it is one plain Lanczos resize to the target size.
- model files (``.pth``, ``.pt``, ``.safetensors``) in ``MODELS_DIR/ESRGAN/`` (or A1111's ``RealESRGAN/``), named
  by file stem like A1111 does. They run through spandrel, an optional extra (``pip install 'sd-studio[upscalers]'``)
  because it needs a torchvision built for the installed torch. A1111's built-in Real-ESRGAN names
  (``R-ESRGAN 4x+ Anime6B`` ...) work when their file (``RealESRGAN_x4plus_anime_6B.pth`` ...) is in one of those
  folders; nothing is downloaded.

Names are matched like samplers are: case-insensitively, with ``_``/``-`` as spaces; the canonical name comes back.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from studio.types import RequestError

logger = logging.getLogger(__name__)

UPSCALER_DIRS = ("ESRGAN", "RealESRGAN")  # under MODELS_DIR; A1111 keeps Real-ESRGAN files in their own folder
MODEL_SUFFIXES = (".pth", ".pt", ".safetensors")
EXTRA = "upscalers"  # the pyproject optional-dependencies group that brings spandrel
INSTALL_HINT = (
    f"pip install 'sd-studio[{EXTRA}]' (spandrel and a torchvision built for the installed torch; "
    "PyPI's torchvision wheels match the CUDA torch builds, not the CPU one)"
)


class UpscalerKind(StrEnum):
    LATENT = "latent"  # interpolate the first pass's latents
    IMAGE = "image"  # decode, resize with PIL, encode
    MODEL = "model"  # decode, run an ESRGAN-family network (spandrel), encode


@dataclass(frozen=True)
class UpscalerSpec:
    """One upscaler choice. `mode`: torch interpolate mode (LATENT) or PIL resample name (IMAGE)."""

    name: str  # A1111's name: what the infotext's "Hires upscaler" records
    kind: UpscalerKind
    mode: str = ""
    antialias: bool = False
    path: Path | None = None  # MODEL: the weights file

    @property
    def is_latent(self) -> bool:
        return self.kind is UpscalerKind.LATENT


NONE = "None"  # A1111's "None": one plain Lanczos resize of the decoded image to the target (not "no upscale")
LATENT_UPSCALERS: tuple[UpscalerSpec, ...] = (
    UpscalerSpec("Latent", UpscalerKind.LATENT, "bilinear"),
    UpscalerSpec("Latent (antialiased)", UpscalerKind.LATENT, "bilinear", antialias=True),
    UpscalerSpec("Latent (bicubic)", UpscalerKind.LATENT, "bicubic"),
    UpscalerSpec("Latent (bicubic antialiased)", UpscalerKind.LATENT, "bicubic", antialias=True),
    UpscalerSpec("Latent (nearest)", UpscalerKind.LATENT, "nearest"),
    UpscalerSpec("Latent (nearest-exact)", UpscalerKind.LATENT, "nearest-exact"),
)
IMAGE_UPSCALERS: tuple[UpscalerSpec, ...] = (
    UpscalerSpec(NONE, UpscalerKind.IMAGE, "lanczos"),
    UpscalerSpec("Lanczos", UpscalerKind.IMAGE, "lanczos"),
    UpscalerSpec("Nearest", UpscalerKind.IMAGE, "nearest"),
)
BUILTIN_UPSCALERS = LATENT_UPSCALERS + IMAGE_UPSCALERS

# A1111's built-in Real-ESRGAN upscalers: their names and the file each one downloads (we never download).
A1111_MODEL_FILES: dict[str, str] = {
    "R-ESRGAN General 4xV3": "realesr-general-x4v3.pth",
    "R-ESRGAN General WDN 4xV3": "realesr-general-wdn-x4v3.pth",
    "R-ESRGAN AnimeVideo": "realesr-animevideov3.pth",
    "R-ESRGAN 4x+": "RealESRGAN_x4plus.pth",
    "R-ESRGAN 4x+ Anime6B": "RealESRGAN_x4plus_anime_6B.pth",
    "R-ESRGAN 2x+": "RealESRGAN_x2plus.pth",
}
_A1111_NAME_BY_STEM = {Path(file).stem.lower(): name for name, file in A1111_MODEL_FILES.items()}


def _key(name: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[_\-]", " ", name.strip().lower()))


_BUILTIN_BY_KEY = {_key(spec.name): spec for spec in BUILTIN_UPSCALERS}


def discover_upscaler_models(models_dir: Path | None) -> list[UpscalerSpec]:
    """ESRGAN-family files in MODELS_DIR/ESRGAN/ and MODELS_DIR/RealESRGAN/ (top level of each), sorted by name.

    A file is named by its stem; a known Real-ESRGAN file by A1111's name for it ("R-ESRGAN 4x+ Anime6B"). When
    two files would share a name, the first folder (then the first suffix in MODEL_SUFFIXES) wins, with a warning.
    """
    if models_dir is None:
        return []
    found: dict[str, UpscalerSpec] = {}
    for folder_name in UPSCALER_DIRS:
        folder = Path(models_dir).expanduser() / folder_name
        if not folder.is_dir():
            continue
        files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES]
        files.sort(key=lambda p: (MODEL_SUFFIXES.index(p.suffix.lower()), p.name))
        for path in files:
            if path.name.startswith("."):
                continue
            name = _A1111_NAME_BY_STEM.get(path.stem.lower(), path.stem)
            key = _key(name)
            if key in found or key in _BUILTIN_BY_KEY:
                logger.warning("upscaler file %s ignored: the name %r is already taken", path, name)
                continue
            found[key] = UpscalerSpec(name, UpscalerKind.MODEL, path=path)
    return sorted(found.values(), key=lambda s: (s.name.lower(), s.name))


def upscaler_names(models_dir: Path | None = None) -> list[str]:
    """Every hires-fix upscaler, in A1111's order: the latent ones, None, Lanczos, Nearest, then model files."""
    return [spec.name for spec in BUILTIN_UPSCALERS] + [spec.name for spec in discover_upscaler_models(models_dir)]


def get(name: str, models_dir: Path | None = None) -> UpscalerSpec:
    """The upscaler called `name`; RequestError("hires_upscaler", ...) listing the available ones if unknown.

    A model file's name is matched by its stem too ("RealESRGAN_x4plus_anime_6B" finds "R-ESRGAN 4x+ Anime6B").
    """
    if not isinstance(name, str) or not name.strip():
        raise RequestError("hires_upscaler", name, f"must be an upscaler name, got {name!r}")
    key = _key(name)
    if key in _BUILTIN_BY_KEY:
        return _BUILTIN_BY_KEY[key]
    models = discover_upscaler_models(models_dir)
    for spec in models:
        if key in (_key(spec.name), _key(spec.path.stem if spec.path else "")):
            return spec
    available = ", ".join(upscaler_names_from(models))
    folders = " or ".join(f"{Path(models_dir or 'MODELS_DIR') / d}/" for d in UPSCALER_DIRS)
    known_file = next((file for a1111, file in A1111_MODEL_FILES.items() if _key(a1111) == key), None)
    if known_file:
        message = (
            f"{name!r} is A1111's name for the model file {known_file}, which is not in {folders}; "
            f"put it there (nothing is downloaded). Available: {available}"
        )
    else:
        message = f"unknown upscaler {name!r}; available: {available} (model files go in {folders})"
    raise RequestError("hires_upscaler", name, message)


def upscaler_names_from(models: list[UpscalerSpec]) -> list[str]:
    """The full name list given already discovered model files (saves a second folder scan)."""
    return [spec.name for spec in BUILTIN_UPSCALERS] + [spec.name for spec in models]
