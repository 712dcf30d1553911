"""LoRA files in MODELS_DIR/Lora/ (A1111's folder): discovery, name lookup, A1111's "Lora hashes", safe reading.

Names follow A1111: a file is named by its stem (``Lora/style/fubuki_v2.safetensors`` -> ``fubuki_v2``), which is
what ``<lora:fubuki_v2:0.8>`` matches. Files in subfolders can also be named by their path under Lora/ without the
suffix (``style/fubuki_v2``), which is how two files with the same stem are told apart (the plain stem then means
the first of them in sorted order), and by the ``ss_output_name`` a kohya trainer wrote into the file (A1111's
"alias from file").

Formats: ``.safetensors`` (kohya/A1111 ``lora_unet_…``/``lora_te_…`` keys, or diffusers/PEFT keys) and, because
A1111 reads them too, ``.pt`` / ``.ckpt`` unpickled with ``torch.load(weights_only=True)``: a file that carries
pickled code is refused, never run.

Importing this module is light: torch is imported only when a ``.pt`` / ``.ckpt`` file is read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studio.engine import ModelLoadError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

LORA_DIR = "Lora"  # A1111's folder name under the models folder
LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt")
HASH_LENGTH = 12  # A1111's "shorthash" of a LoRA, as written in "Lora hashes"
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors format's own upper bound for the JSON header


@dataclass(frozen=True)
class LoraFile:
    """One LoRA file. `name` (the stem) is what a `<lora:NAME>` tag matches; `relative` is its path under Lora/
    without the suffix, "/"-separated (equal to `name` for files at the top of the folder)."""

    name: str
    path: Path
    relative: str

    @property
    def is_safetensors(self) -> bool:
        return self.path.suffix.lower() == ".safetensors"


def lora_dir(models_dir: Path) -> Path:
    return Path(models_dir) / LORA_DIR


def discover_loras(models_dir: Path) -> list[LoraFile]:
    """Every LoRA file under MODELS_DIR/Lora/ (any depth), sorted by path; hidden files and folders are skipped.

    A missing folder means no LoRAs (not an error).
    """
    root = lora_dir(models_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.suffix.lower() in LORA_SUFFIXES and path.is_file():
            found.append(LoraFile(name=path.stem, path=path, relative=relative.with_suffix("").as_posix()))
    return sorted(found, key=lambda lora: (lora.relative.lower(), lora.relative))


def find_lora(name: str, loras: list[LoraFile]) -> LoraFile | None:
    """The file a tag's NAME means (see module docstring): stem, then path under Lora/, then the kohya
    ``ss_output_name`` alias, then a stem that differs only in case when exactly one does. None when nothing fits."""
    for lora in loras:
        if lora.name == name:
            return lora
    for lora in loras:
        if lora.relative == name:
            return lora
    for lora in loras:
        if lora.is_safetensors and safetensors_metadata(lora.path).get("ss_output_name") == name:
            return lora
    folded = [lora for lora in loras if lora.name.lower() == name.lower()]
    return folded[0] if len(folded) == 1 else None


def _header_length(handle: Any, path: Path) -> int:
    raw = handle.read(8)
    if len(raw) != 8:
        raise ModelLoadError(f"{path.name}: not a valid .safetensors file (shorter than its header)")
    (length,) = struct.unpack("<Q", raw)
    if length > _MAX_HEADER:
        raise ModelLoadError(f"{path.name}: not a valid .safetensors file (header of {length} bytes)")
    return length


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` strings of a .safetensors header (training settings, kohya's hashes); {} if it has none.

    Raises ModelLoadError when the header cannot be read.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            header = handle.read(_header_length(handle, path))
        metadata = json.loads(header).get("__metadata__") or {}
    except (OSError, ValueError, AttributeError) as err:
        raise ModelLoadError(f"{path.name}: not a valid .safetensors file ({err})") from err
    return {str(key): str(value) for key, value in metadata.items()} if isinstance(metadata, dict) else {}


_hash_lock = threading.Lock()
_hash_cache: dict[tuple[str, int, int], str] = {}  # (path, mtime_ns, size) -> full hash


def _sha256(path: Path, skip_header: bool) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if skip_header:
            handle.seek(8 + _header_length(handle, path))
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def lora_hash(path: Path) -> str:
    """A1111's LoRA hash as written in ``Lora hashes: "name: hash"``: 12 hex digits.

    As A1111 does it: the ``sshs_model_hash`` a kohya trainer stored in the file's metadata when there is one; else,
    for .safetensors, the sha256 of the tensor data after the header (so editing the metadata keeps the hash: the
    "addnet" hash), and for other files the sha256 of the whole file. Cached per process by path, mtime and size.
    """
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    with _hash_lock:
        cached = _hash_cache.get(key)
    if cached is None:
        is_safetensors = path.suffix.lower() == ".safetensors"
        stored = safetensors_metadata(path).get("sshs_model_hash", "").strip() if is_safetensors else ""
        try:
            cached = stored.lower() or _sha256(path, skip_header=is_safetensors)
        except OSError as err:
            raise ModelLoadError(f"{path.name}: cannot be read ({err})") from err
        with _hash_lock:
            _hash_cache[key] = cached
    return cached[:HASH_LENGTH]


def read_pickled_lora(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .pt / .ckpt LoRA, unpickled with weights_only=True (pickled code raises ModelLoadError)."""
    import torch

    from studio.models.single_file import load_ckpt

    state = load_ckpt(Path(path))
    tensors = {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise ModelLoadError(f"{Path(path).name}: holds no tensors, so it is not a LoRA")
    return tensors
