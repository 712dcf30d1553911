"""A1111's "Model hash" for the infotext: a sha256 of the model's weights, cached by path, mtime and size.

Hashing a multi-gigabyte checkpoint takes seconds, so each result is kept in cache_dir()/hashes.json and reused
until the file changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

from studio import fs
from studio.config import cache_dir
from studio.models.demo import demo_model_dir
from studio.models.loading import hub_cached_file
from studio.models.sources import DEMO_INPAINT, ModelKind, ModelSource

logger = logging.getLogger(__name__)

INDEX_NAME = "hashes.json"


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


def _read_index(index_path: Path) -> dict[str, dict]:
    try:
        return json.loads(index_path.read_text())
    except (OSError, ValueError):
        return {}


def sha256_files(files: list[Path]) -> str:
    """sha256 over `files` (streamed, in order), cached in cache_dir()/hashes.json by path + mtime + size."""
    stats = [f.stat() for f in files]
    key = "|".join(str(f.resolve()) for f in files)
    stamp = [[s.st_mtime_ns, s.st_size] for s in stats]
    index_path = cache_dir() / INDEX_NAME
    entry = _read_index(index_path).get(key)
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
    with fs.file_lock(index_path.with_name(INDEX_NAME + ".lock")):
        index = _read_index(index_path)
        index[key] = {"stamp": stamp, "sha256": value}
        # A cache: losing the last entry in a crash only means hashing again, so no fsync.
        fs.atomic_write(index_path, json.dumps(index, indent=1, sort_keys=True), durable=False)
    return value


def _weight_files(source: ModelSource) -> list[Path]:
    """The files whose hash is the model's hash (empty when nothing local can be hashed)."""
    match source.kind:
        case ModelKind.SINGLE_FILE:
            return [Path(source.location)]
        case ModelKind.DIFFUSERS:
            return _unet_weight_files(Path(source.location))
        case ModelKind.DEMO:
            return _unet_weight_files(demo_model_dir(inpaint=source.location == DEMO_INPAINT))
        case ModelKind.HUB:
            cached = hub_cached_file(source.location, "unet/diffusion_pytorch_model.safetensors")
            return [Path(cached)] if cached else []


def model_hash(source: ModelSource) -> str:
    """A1111's "Model hash": the first 10 hex digits of a sha256 ("" when nothing local can be hashed).

    Single file: of the file. Diffusers folder / demo / cached hub model: of the UNet weights.
    """
    files = [f for f in _weight_files(source) if f.is_file()]
    return sha256_files(files)[:10] if files else ""
