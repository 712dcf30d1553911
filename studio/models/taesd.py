"""TAESD, the tiny distilled VAE (github.com/madebyollin/taesd): the "Approx (TAESD)" VAE choice for fast drafts.

It decodes a 512x512 image in a fraction of the full VAE's time (bench: `vae_decode`), at a small loss of detail,
through diffusers' `AutoencoderTiny`. Its weights are looked for, in order:

1. ``MODELS_DIR/VAE-approx/taesd/`` (``taesdxl/`` for SDXL models): the diffusers folder of the hub model
   ``madebyollin/taesd`` (config.json + diffusion_pytorch_model.safetensors);
2. A1111's files in ``MODELS_DIR/VAE-approx/``: ``taesd_decoder.pth`` and ``taesd_encoder.pth`` (or
   ``.safetensors``; ``taesdxl_*`` for SDXL). The encoder is only needed to encode images (img2img, inpaint,
   hires fix); A1111 usually has only the decoder;
3. the local Hugging Face cache of ``madebyollin/taesd`` / ``madebyollin/taesdxl``, or the hub itself when online.

When none is there, the error says where to put them. ``.pth`` files are unpickled with ``weights_only=True``.
Importing this module is light: torch and diffusers are imported when weights load.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.engine import ModelLoadError

logger = logging.getLogger(__name__)

TAESD = "Approx (TAESD)"  # the VAE name in requests, the UI, the A1111 API and the infotext
APPROX_DIR = "VAE-approx"  # A1111's folder for TAESD and its other preview decoders
_SUFFIXES = (".safetensors", ".pth", ".pt")
FAMILIES = {"sd": ("taesd", "madebyollin/taesd"), "sdxl": ("taesdxl", "madebyollin/taesdxl")}
_HAS_ENCODER = "_studio_taesd_encoder"  # set on loaded modules: whether encoder weights were loaded


def approx_dir(models_dir: Path) -> Path:
    return Path(models_dir) / APPROX_DIR


def family_of(pipe: Any) -> str:
    """Which TAESD fits `pipe`'s latents: "sdxl" for SDXL pipelines (two text encoders), else "sd" (SD 1.x/2.x)."""
    return "sdxl" if getattr(pipe, "text_encoder_2", None) is not None else "sd"


@dataclass(frozen=True)
class TaesdWeights:
    """Where one TAESD's weights are: a diffusers folder, A1111's split files, or a hub id (downloaded on load)."""

    kind: str  # "folder", "files" or "hub"
    location: str  # the folder, the VAE-approx folder, or the hub id
    decoder: Path | None = None  # kind "files"
    encoder: Path | None = None  # kind "files"; None when only the decoder is there
    hint: str = ""  # kind "hub": where to put the weights instead, for when the download fails

    def stamp(self) -> tuple[str, ...]:
        """What identifies these weights now (paths, sizes and mtimes): a changed file is loaded again."""
        paths = [p for p in (self.decoder, self.encoder) if p is not None]
        if self.kind != "hub" and not paths:
            paths = sorted(Path(self.location).glob("*"))
        stats = [f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in paths if p.is_file()]
        return (self.kind, self.location, *stats)


def _first(folder: Path, stem: str) -> Path | None:
    for suffix in _SUFFIXES:
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return None


def find_taesd(models_dir: Path, family: str = "sd", *, offline: bool | None = None) -> TaesdWeights | None:
    """The TAESD weights for `family` ("sd" or "sdxl"), or None when there are none (see the module's order)."""
    from studio.config import hub_offline
    from studio.models.loading import hub_cached_file

    stem, hub_id = FAMILIES[family]
    root = approx_dir(models_dir)
    if (root / stem / "config.json").is_file():
        return TaesdWeights("folder", str(root / stem))
    decoder = _first(root, f"{stem}_decoder")
    if decoder is not None:
        return TaesdWeights("files", str(root), decoder=decoder, encoder=_first(root, f"{stem}_encoder"))
    cached = hub_cached_file(hub_id, "config.json")
    if cached is not None:
        return TaesdWeights("folder", str(Path(cached).parent))
    if not (hub_offline() if offline is None else offline):
        return TaesdWeights("hub", hub_id, hint=missing_message(models_dir, family))
    return None


def missing_message(models_dir: Path, family: str = "sd") -> str:
    """Where to put the weights, for the error when there are none."""
    stem, hub_id = FAMILIES[family]
    root = approx_dir(models_dir)
    return (
        f"no TAESD weights for this model: put the diffusers folder of {hub_id} (config.json and "
        f"diffusion_pytorch_model.safetensors) in {root / stem}/, or A1111's {stem}_decoder.pth and "
        f"{stem}_encoder.pth (or .safetensors) in {root}/ (the hub is not used: it is offline or unreachable)"
    )


def has_encoder(vae: Any) -> bool:
    """Whether a TAESD loaded by `load_taesd` can encode images (its encoder weights were there)."""
    return bool(getattr(vae, _HAS_ENCODER, True))


def _split_state(decoder: Path, encoder: Path | None) -> dict[str, Any]:
    """A1111's taesd_decoder/_encoder tensors in AutoencoderTiny's layout: the original decoder is a Sequential
    that starts with a parameterless clamp, so its layer indices are one ahead of diffusers' ``decoder.layers``."""
    from studio.models.vae import read_vae_state

    state: dict[str, Any] = {}
    for key, value in read_vae_state(decoder).items():
        index, _, rest = key.removeprefix("decoder.").partition(".")
        if not index.isdigit() or int(index) < 1:
            raise ModelLoadError(f"{decoder.name}: not a TAESD decoder (unexpected tensor {key!r})")
        state[f"decoder.layers.{int(index) - 1}.{rest}"] = value
    if encoder is not None:
        for key, value in read_vae_state(encoder).items():
            state[f"encoder.layers.{key.removeprefix('encoder.')}"] = value
    return state


def _from_files(weights: TaesdWeights) -> Any:
    from diffusers import AutoencoderTiny

    assert weights.decoder is not None
    state = _split_state(weights.decoder, weights.encoder)
    vae = AutoencoderTiny()  # the published TAESD / TAESDXL share this default architecture
    expected = {k for k in vae.state_dict() if weights.encoder is not None or not k.startswith("encoder.")}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - set(vae.state_dict()))
    if missing or unexpected:
        raise ModelLoadError(
            f"{weights.decoder.name}: does not fit TAESD ({len(missing)} weights missing, e.g. {missing[:2]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:2]})"
        )
    try:
        vae.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes differ
        detail = " ".join(str(err).split())[:300]
        raise ModelLoadError(f"{weights.decoder.name}: does not fit TAESD ({detail})") from err
    setattr(vae, _HAS_ENCODER, weights.encoder is not None)
    return vae


def load_taesd(weights: TaesdWeights, *, dtype: Any = None, device: str = "cpu") -> Any:
    """An `AutoencoderTiny` from `weights` in `dtype` on `device`. Raises ModelLoadError naming what is wrong."""
    from diffusers import AutoencoderTiny

    try:
        if weights.kind == "files":
            vae = _from_files(weights)
        else:
            local = weights.kind == "folder"
            vae = AutoencoderTiny.from_pretrained(weights.location, local_files_only=local)
    except ModelLoadError:
        raise
    except Exception as err:
        hint = f" — {weights.hint}" if weights.hint else ""
        raise ModelLoadError(f"TAESD from {weights.location}: {type(err).__name__}: {err}{hint}") from err
    vae = vae.to(device=device, dtype=dtype) if dtype is not None else vae.to(device)
    logger.info("loaded TAESD from %s", weights.location)
    return vae.eval()
