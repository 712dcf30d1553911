"""The warm IR cache: a model converted once loads again from its IR alone, without its torch weights.

The first OpenVINO load of a model reads its torch weights, converts (or finds in the IR cache) its networks and
then writes a *warm entry*: ``<cache>/models/<key>/``, a weightless export (model_index.json, the component configs,
tokenizer and scheduler, and ``openvino/`` with hard links to the IR and its manifest). Every later load of the same
model finds the entry by key and builds the pipeline from configs + IR (`load_prepared_pipeline`), so it never
materialises the UNet, VAE or text-encoder weights in torch: a warm SD 1.5 load peaks at the compiled networks' size
instead of torch's pipeline plus the compiled networks.

The key is the model's identity, cheap to compute without loading it: for every file the model is read from
(a single checkpoint and the files beside it that share its stem; a diffusers folder's configs, tokenizer and
weight files; the hub's cached snapshot), its relative name, size and 18 sampled 64 KB slices
(studio.engines.openvino_export.sampled_digest, ~1 MB read per file), plus the IR weight format, the OpenVINO
version and the format versions. Replaced weights give another key, so a stale entry is never used; an unusable
entry (deleted IR, unreadable files) is logged and the model is converted again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from studio.engines.openvino_export import (
    COMPONENTS,
    MANIFEST,
    ExportManifest,
    read_manifest,
    sampled_digest,
)
from studio.fs import file_lock, staged_dir

logger = logging.getLogger(__name__)

WARM_FORMAT = 1  # bump when the entry layout changes
_MODULES = ("unet", "text_encoder", "vae")
_FOLDER_PARTS = ("unet", "text_encoder", "vae", "tokenizer", "scheduler")


def _model_files(source: Any) -> tuple[Path, list[Path]] | None:
    """(the root the files are named relative to, the files the model is loaded from), or None when the source
    has no local files yet (a hub model not in the local cache)."""
    from studio.models.demo import demo_model_dir
    from studio.models.loading import hub_cached_file
    from studio.models.sources import DEMO_INPAINT, ModelKind

    match source.kind:
        case ModelKind.SINGLE_FILE:
            path = Path(source.location)
            if not path.is_file():
                return None
            # A1111 keeps a model's own VAE and config beside it (<stem>.vae.safetensors, <stem>.yaml).
            siblings = sorted(p for p in path.parent.glob(f"{path.stem}.*") if p.is_file())
            return path.parent, siblings
        case ModelKind.DEMO:
            folder = demo_model_dir(inpaint=source.location == DEMO_INPAINT)
        case ModelKind.DIFFUSERS:
            folder = Path(source.location)
        case ModelKind.HUB:
            index = hub_cached_file(source.location, "model_index.json")
            if index is None:
                return None
            folder = Path(index).parent
        case _:
            return None
    if not (folder / "model_index.json").is_file():
        return None
    files = [folder / "model_index.json"]
    for part in _FOLDER_PARTS:
        if (folder / part).is_dir():
            files += sorted(p for p in (folder / part).iterdir() if p.is_file())
    return folder, files


def warm_key(source: Any, weight_format: str, openvino_version: str) -> str | None:
    """The warm entry key of `source` for IR of `weight_format` ("int8"/"fp16"/"fp32"), or None when it has no
    local files."""
    from studio.engines.openvino_int8 import recipe
    from studio.engines.openvino_ir import IR_FORMAT_VERSION

    found = _model_files(source)
    if found is None:
        return None
    root, files = found
    digest = hashlib.sha256(
        f"{source.kind}|{recipe(weight_format)}|{openvino_version}|{IR_FORMAT_VERSION}|{WARM_FORMAT}".encode()
    )
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode())
        sampled_digest(path, digest)
    return digest.hexdigest()[:24]


def entry_dir(cache: Path, key: str) -> Path:
    return cache / "models" / key


def find_entry(cache: Path, key: str) -> ExportManifest | None:
    """The warm entry `key` when it is complete (its manifest names IR that is all there), else None."""
    manifest = read_manifest(entry_dir(cache, key))
    if manifest is None:
        return None
    if any(not manifest.ir_files(module, verify_weights=False) for module in _MODULES):
        return None
    return manifest


def _save_configs(pipe: Any, folder: Path) -> None:
    """What `load_prepared_pipeline` builds the pipeline from: every config, the tokenizer and the scheduler."""
    pipe.save_config(folder)
    pipe.unet.save_config(folder / "unet")
    pipe.vae.save_config(folder / "vae")
    pipe.text_encoder.config.save_pretrained(folder / "text_encoder")
    pipe.tokenizer.save_pretrained(folder / "tokenizer")
    pipe.scheduler.save_pretrained(folder / "scheduler")


def write_entry(
    cache: Path,
    key: str,
    pipe: Any,
    ir_dirs: dict[str, Path],
    *,
    source_name: str,
    weight_format: str,
    precision: str,
    openvino_version: str,
) -> Path:
    """Publish the warm entry `key` for `pipe` (whose networks' IR folders are `ir_dirs`, by network name:
    unet, text_encoder, vae_decoder, vae_encoder). The IR is hard-linked (copied across file systems)."""
    folder = entry_dir(cache, key)
    missing = sorted(set(COMPONENTS) - set(ir_dirs))
    if missing:
        raise ValueError(f"no IR for {', '.join(missing)}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(folder.parent / f".{key}.lock"):
        if find_entry(cache, key) is not None:
            return folder
        with staged_dir(folder, replace=lambda leftover: find_entry(cache, key) is None) as tmp:
            _save_configs(pipe, tmp)
            manifest = ExportManifest(
                folder=folder,
                openvino=openvino_version,
                weights=weight_format,
                precision=precision,
                source=source_name,
                created=_now(),
            )
            for name, module in COMPONENTS.items():
                manifest.add_ir(tmp, name, module, ir_dirs[name])
            (tmp / MANIFEST).write_text(manifest.as_json())
            (tmp / "warm.json").write_text(json.dumps({"key": key, "format": WARM_FORMAT, "source": source_name}))
    logger.info("wrote the warm OpenVINO entry of %s: %s", source_name, folder)
    return folder


def ir_dirs_of(components: Iterable[Any], names: Iterable[str]) -> dict[str, Path]:
    """{network name: IR folder} from report components (the first of each name: the base model's)."""
    wanted, found = set(names), {}
    for component in components:
        if component.name in wanted and component.name not in found:
            found[component.name] = Path(component.ir_dir)
    return found


def _weightless(module: torch.nn.Module) -> torch.nn.Module:
    """`module` (built on the meta device) with empty CPU tensors for every parameter and buffer: the state
    `release_weights` leaves after a conversion (dtype, device and config readable; the calls go to OpenVINO)."""
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None:
                sub._parameters[name] = torch.nn.Parameter(torch.empty(0, dtype=param.dtype), requires_grad=False)
        for name, buffer in list(sub._buffers.items()):
            if buffer is not None:
                sub._buffers[name] = torch.empty(0, dtype=buffer.dtype)
    return module.eval()


def weightless_components(folder: Path) -> dict[str, torch.nn.Module]:
    """The UNet, text encoder and VAE of the diffusers folder `folder`, from their configs only."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
    return {"unet": _weightless(unet), "text_encoder": _weightless(text_encoder), "vae": _weightless(vae)}


def _now() -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%S")
