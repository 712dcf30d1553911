"""What the A1111 API lists, in A1111 1.9's shapes: checkpoints (with their titles), samplers, schedule types,
upscalers, latent upscale modes, VAE and LoRA files. Everything is read from the studio's own registries and the
models folder at each call (so A1111's refresh endpoints have nothing to do). Light: no torch.

A checkpoint's `title` is A1111's: its file name, with ` [short hash]` once the hash is known. As in A1111 only the
loaded model is hashed (hashing every multi-gigabyte file would make the first listing take minutes); a title is
accepted with or without its hash, as are the model name and the file path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.engine import EngineStatus
from studio.sdapi.errors import ApiError, invalid

logger = logging.getLogger(__name__)

# A1111's rho for the Karras schedule (its /schedulers lists default_rho; -1 = not applicable).
_RHO = {"karras": 7.0}


@dataclass(frozen=True)
class Checkpoint:
    """One entry of /sdapi/v1/sd-models; `spec` is what the engine's load() takes."""

    title: str
    model_name: str
    hash: str | None
    sha256: str | None
    filename: str
    spec: str

    def names(self) -> tuple[str, ...]:
        """Every name a client may use for it."""
        plain = self.title.split(" [", 1)[0]
        return tuple(n for n in (self.title, plain, self.model_name, self.filename, self.spec, self.hash) if n)

    def as_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "model_name": self.model_name,
            "hash": self.hash,
            "sha256": self.sha256,
            "filename": self.filename,
            "config": None,
        }


class HashCache:
    """Model hashes by location, computed once per process (the hash file cache makes restarts cheap too)."""

    def __init__(self) -> None:
        self._hashes: dict[str, tuple[str | None, str | None]] = {}

    def known(self, source: Any) -> tuple[str | None, str | None]:
        """The hashes of a model hashed before (a model keeps its title once it was loaded, as in A1111)."""
        return self._hashes.get(self._key(source), (None, None))

    @staticmethod
    def _key(source: Any) -> str:
        return f"{source.kind}:{source.location}"

    def get(self, source: Any) -> tuple[str | None, str | None]:
        """(A1111's 10-hex short hash, full sha256 or None) of a studio.models.ModelSource."""
        from studio.models import ModelKind, model_hash
        from studio.models.hashing import sha256_files

        key = self._key(source)
        if key not in self._hashes:
            try:
                if source.kind is ModelKind.SINGLE_FILE:
                    full = sha256_files([Path(source.location)])
                    self._hashes[key] = (full[:10], full)
                else:
                    self._hashes[key] = (model_hash(source) or None, None)
            except OSError as err:
                logger.warning("could not hash %s: %s", source.name, err)
                return None, None
        return self._hashes[key]


def checkpoints(status: EngineStatus, models_dir: Path, hashes: HashCache) -> list[Checkpoint]:
    """The loaded model first, then the demo and the models in `models_dir`. A remote backend lists only what it
    serves (its models cannot be switched from here)."""
    from studio.models import DEMO_SOURCE, discover_models, resolve_model

    loaded_location = status.details.get("location") if status.loaded else None
    if status.backend != "local":
        name = status.model or status.backend
        return [Checkpoint(title=name, model_name=name, hash=None, sha256=None, filename=name, spec=name)]
    sources = [DEMO_SOURCE, *discover_models(models_dir)]
    loaded = None
    if loaded_location:
        loaded = next((s for s in sources if str(s.location) == loaded_location), None)
        if loaded is None:
            try:
                loaded = resolve_model(loaded_location, models_dir)
            except Exception as err:  # a model that loaded resolves again; if not, list what we can
                logger.warning("could not resolve the loaded model %s: %s", loaded_location, err)
    entries = []
    for source in ([loaded] if loaded is not None else []) + [s for s in sources if s != loaded]:
        digest, full = hashes.get(source) if source == loaded else hashes.known(source)
        entries.append(_entry(source, digest, full))
    return entries


def _entry(source: Any, digest: str | None, full: str | None) -> Checkpoint:
    from studio.models import CHECKPOINT_SUFFIXES, ModelKind

    display = source.name  # a file's title has its suffix, as A1111's does ("sub/name.safetensors")
    if source.kind is ModelKind.SINGLE_FILE and Path(display).suffix.lower() not in CHECKPOINT_SUFFIXES:
        display += Path(source.location).suffix
    title = f"{display} [{digest}]" if digest else display
    return Checkpoint(
        title=title,
        model_name=source.name.replace("/", "_"),
        hash=digest,
        sha256=full,
        filename=str(source.location),
        spec=str(source.location) if source.kind is not ModelKind.DEMO else source.name,
    )


def find_checkpoint(name: str, entries: list[Checkpoint], loc: tuple[str, ...]) -> Checkpoint:
    """The checkpoint a client named (any of `Checkpoint.names()`); 422 naming `loc` and listing the titles."""
    for entry in entries:
        if name in entry.names():
            return entry
    folded = [e for e in entries if name.lower() in (n.lower() for n in e.names())]
    if len(folded) == 1:
        return folded[0]
    plain = name.split(" [", 1)[0]  # a title with a hash this process has not computed (yet)
    by_plain = [e for e in entries if e.title.split(" [", 1)[0] == plain]
    if plain != name and len(by_plain) == 1:
        return by_plain[0]
    titles = ", ".join(repr(e.title) for e in entries[:20]) or "none"
    raise invalid(loc, f"unknown checkpoint {name!r}; available titles: {titles}", name)


def samplers(names: list[str]) -> list[dict[str, Any]]:
    """A1111's /samplers: name, aliases, options (the studio's samplers take no extra options)."""
    from studio.samplers import get_sampler

    listed = []
    for name in names:
        spec = get_sampler(name)
        aliases = [alias.replace(" ", "_") for alias in spec.aliases]
        listed.append({"name": spec.name, "aliases": aliases, "options": {}})
    return listed


def schedulers() -> list[dict[str, Any]]:
    """A1111's /schedulers: name (the API name), label, aliases, default_rho, need_inner_model."""
    from studio.samplers import SCHEDULES

    return [
        {
            "name": spec.api_name,
            "label": spec.name,
            "aliases": list(spec.aliases) or None,
            "default_rho": _RHO.get(spec.api_name, -1),
            "need_inner_model": False,
        }
        for spec in SCHEDULES
    ]


def upscalers(models_dir: Path) -> list[dict[str, Any]]:
    """A1111's /upscalers: the pixel upscalers (None, Lanczos, Nearest, ESRGAN-family files), not the latent ones."""
    from studio.upscalers import IMAGE_UPSCALERS, discover_upscaler_models

    listed = [
        {"name": spec.name, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
        for spec in IMAGE_UPSCALERS
    ]
    for spec in discover_upscaler_models(models_dir):
        path = str(spec.path) if spec.path else None
        listed.append({"name": spec.name, "model_name": spec.name, "model_path": path, "model_url": None, "scale": 4})
    return listed


def latent_upscale_modes() -> list[dict[str, Any]]:
    from studio.upscalers import LATENT_UPSCALERS

    return [{"name": spec.name} for spec in LATENT_UPSCALERS]


def vaes(models_dir: Path) -> list[dict[str, Any]]:
    """A1111's /sd-vae: the files in MODELS_DIR/VAE ("Automatic" and "None" are not listed, as in A1111)."""
    from studio.models.vae import discover_vaes

    return [{"model_name": vae.name, "filename": str(vae.path)} for vae in discover_vaes(models_dir)]


def loras(models_dir: Path) -> list[dict[str, Any]]:
    """A1111's /loras: name (what `<lora:NAME:w>` takes), alias, path, metadata (safetensors header metadata)."""
    from studio.models.lora import discover_loras, safetensors_metadata

    listed = []
    for lora in discover_loras(models_dir):
        metadata: dict[str, Any] = {}
        if lora.is_safetensors:
            try:
                metadata = dict(safetensors_metadata(lora.path))
            except Exception as err:  # a broken file is listed without metadata; using it names the problem
                logger.warning("could not read the metadata of %s: %s", lora.path, err)
        listed.append({"name": lora.name, "alias": lora.name, "path": str(lora.path), "metadata": metadata})
    return listed


__all__ = ["ApiError", "Checkpoint", "HashCache", "checkpoints", "find_checkpoint"]
