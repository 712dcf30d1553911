"""Prepared OpenVINO models: `python -m studio.models export-openvino MODEL DIR`, and how the engine finds their IR.

An export is a diffusers folder (configs, tokenizer, scheduler and the torch weights) plus ``openvino/``: the IR of
its UNet, text encoder and VAE (decoder and encoder) and ``openvino/manifest.json`` naming them. It is made at image
build time so that a cold start (AWS Lambda, studio.serving.aws_lambda) never converts: converting an SD 1.5 UNet
takes 30-65 s and 4.5-6.6 GB of RAM, compiling its IR a few seconds.

The manifest records, per component, the sha256 of its config.json and a sampled digest of its weight files
(sizes plus 18 slices of 64 KB each: ~1 MB read per file, milliseconds). The OpenVINO engine uses the prepared IR
only while those still match the folder (`manifest_for`), so replaced weights are converted again rather than
silently answered with the old IR. The IR weights follow the export's precision (openvino_ir.weight_format): for
"bf16" (the default) int8 MatMul weights and fp16 for the rest, fp32 for "f32"; either compiles at either inference
precision, which is decided per CPU when the model loads (studio.engines.openvino.cpu_bf16).

This module imports openvino and torch only inside `export_openvino`; reading a manifest is plain JSON.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from studio.config import Precision, parse_enum
from studio.engine import ModelLoadError
from studio.fs import staged_dir

logger = logging.getLogger(__name__)

MANIFEST = Path("openvino") / "manifest.json"
MANIFEST_FORMAT = 1
# Which pipeline attribute each network comes from.
COMPONENTS = {"unet": "unet", "text_encoder": "text_encoder", "vae_decoder": "vae", "vae_encoder": "vae"}
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_SLICE = 64 * 1024
_SLICES = 16


@dataclass(frozen=True)
class PreparedComponent:
    """One network's IR in an export, and the digests of the folder content it was converted from."""

    name: str  # unet, text_encoder, vae_decoder, vae_encoder
    module: str  # the pipeline attribute: unet, text_encoder, vae
    ir_dir: str  # relative to the export folder, e.g. openvino/unet-<key>
    config_sha256: str  # of <module>/config.json
    weights_digest: str  # `weights_digest(<folder>/<module>)`


@dataclass
class ExportManifest:
    """openvino/manifest.json of an export folder."""

    folder: Path
    openvino: str  # the version that converted the IR
    weights: str  # "int8", "fp16" or "fp32": the IR's weight format (openvino_ir.weight_format)
    precision: str  # the precision asked for at export (bf16 -> int8 weights)
    source: str  # the model that was exported
    created: str
    components: list[PreparedComponent] = field(default_factory=list)
    model_hash: str = ""  # A1111's "Model hash" of the exported UNet weights (what the infotext records)
    format: int = MANIFEST_FORMAT

    def as_json(self) -> str:
        data = asdict(self)
        data.pop("folder")
        return json.dumps(data, indent=1)

    def add_ir(self, staging: Path, name: str, module: str, ir_dir: Path) -> None:
        """Copy (hard-link) the IR folder `ir_dir` of network `name` into the export being written at `staging`
        and record it, with the digests of the `module` folder's config and weights already written there."""
        relative = Path("openvino") / ir_dir.name
        link_or_copy_tree(ir_dir, staging / relative)
        self.components.append(
            PreparedComponent(
                name=name,
                module=module,
                ir_dir=relative.as_posix(),
                config_sha256=sha256_file(staging / module / "config.json"),
                weights_digest=weights_digest(staging / module),
            )
        )

    def ir_files(self, module: str, *, verify_weights: bool = True) -> dict[str, Path]:
        """{network name: model.xml} for the pipeline attribute `module` ("unet", "text_encoder", "vae"), or {} when
        the export has none or the folder no longer matches what was exported (logged)."""
        found = [c for c in self.components if c.module == module]
        if not found:
            return {}
        reason = self._mismatch(found[0], verify_weights)
        if reason:
            logger.warning("%s: not using the prepared %s IR: %s", self.folder, module, reason)
            return {}
        files = {c.name: self.folder / c.ir_dir / "model.xml" for c in found}
        missing = [str(xml) for xml in files.values() if not xml.is_file() or not xml.with_suffix(".bin").is_file()]
        if missing:
            logger.warning("%s: the prepared IR is incomplete (missing %s)", self.folder, ", ".join(missing))
            return {}
        return files

    def _mismatch(self, component: PreparedComponent, verify_weights: bool) -> str | None:
        folder = self.folder / component.module
        config = folder / "config.json"
        if not config.is_file() or sha256_file(config) != component.config_sha256:
            return f"{component.module}/config.json changed since the export"
        if verify_weights and weights_digest(folder) != component.weights_digest:
            return f"the {component.module} weights changed since the export"
        return None


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sampled_digest(path: Path, digest: Any) -> None:
    """Feed `digest` a cheap identity of the file `path`: its size and 18 slices of 64 KB (start, end and 16 in
    between). Different weights of the same architecture differ in their sampled bytes."""
    size = path.stat().st_size
    digest.update(f"{path.name}|{size}".encode())
    offsets = sorted({0, max(0, size - _SLICE), *(size * (i + 1) // (_SLICES + 1) for i in range(_SLICES))})
    with open(path, "rb") as handle:
        for offset in offsets:
            handle.seek(offset)
            digest.update(handle.read(_SLICE))


def weights_digest(folder: Path) -> str:
    """A cheap identity of the weight files in `folder` (`sampled_digest` of each, by name)."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES) if folder.is_dir() else []
    for path in files:
        sampled_digest(path, digest)
    return digest.hexdigest()


def read_manifest(folder: Path | str) -> ExportManifest | None:
    """The export manifest of `folder`, or None when `folder` is not an export (or its manifest is unreadable)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("format") != MANIFEST_FORMAT:
            logger.warning("%s: manifest format %s is not %s; ignoring it", path, data.get("format"), MANIFEST_FORMAT)
            return None
        components = [PreparedComponent(**c) for c in data.pop("components")]
        return ExportManifest(folder=folder, components=components, **data)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        logger.warning("%s: unreadable export manifest (%s); ignoring it", path, exc)
        return None


def manifest_for(pipe: Any) -> ExportManifest | None:
    """The export manifest of the folder `pipe` was loaded from (diffusers keeps it as `_name_or_path`), or None."""
    location = getattr(getattr(pipe, "config", None), "_name_or_path", None) or getattr(pipe, "name_or_path", None)
    if not location or not isinstance(location, str):
        return None
    folder = Path(location)
    return read_manifest(folder) if folder.is_dir() else None


def link_or_copy_tree(source: Path, target: Path) -> None:
    """Copy an IR folder, hard-linking the files when source and target share a file system (no 2 GB copy)."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link)


def _is_export(folder: Path) -> bool:
    """What an export may replace: an earlier export (or a plain diffusers folder) at the same place."""
    return (folder / "model_index.json").is_file()


def export_openvino(
    model: str,
    out_dir: Path | str,
    *,
    precision: Precision | str = Precision.BF16,
    weights: str = "auto",
    models_dir: Path = Path("models"),
    cache: Path | None = None,
) -> ExportManifest:
    """Write `model` (a path, hub id, single file or "demo") to `out_dir` as a diffusers folder with its OpenVINO IR
    (`weights` as --openvino-weights: "auto", "int8", "fp16" or "fp32").

    The IR is converted through the studio's IR cache (`cache`, default studio.engines.openvino.default_cache_dir()),
    so a model converted before is only copied (hard-linked where possible). `out_dir` is published atomically; an
    existing export or diffusers folder there is replaced, anything else is refused (FileExistsError).
    Raises ModelLoadError when the model cannot be loaded or is not an SD 1.x/2.x pipeline.
    """
    import openvino as ov
    import torch

    from studio import models
    from studio.engines.openvino import SPECS, check_supported, default_cache_dir
    from studio.engines.openvino_int8 import calibration_for
    from studio.engines.openvino_ir import ir_path, module_fingerprint, weight_format
    from studio.models.hashing import sha256_files

    started = time.perf_counter()
    precision = parse_enum(Precision, "precision", precision)
    cache = Path(cache) if cache is not None else default_cache_dir()
    source = models.resolve_model(model, models_dir)
    pipe = models.load_pipeline(source, device="cpu", dtype=torch.float32)
    check_supported(pipe)
    version = ov.get_version()
    manifest = ExportManifest(
        folder=Path(out_dir),
        openvino=version,
        weights=weight_format(precision.value, str(weights)),
        precision=precision.value,
        source=source.name,
        created=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    with staged_dir(Path(out_dir), replace=_is_export) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        for attr in ("unet", "text_encoder", "vae"):
            module = getattr(pipe, attr, None)
            if module is None:
                raise ModelLoadError(f"{source.name}: the pipeline has no {attr}; nothing to export")
            fingerprint = module_fingerprint(module)
            for spec in SPECS[attr](module):
                calib = calibration_for(pipe, attr, module)
                xml, hit, seconds = ir_path(spec, module, fingerprint, cache, manifest.weights, version, calib)
                logger.info("%s IR %s (%.0fs)", spec.name, "from the cache" if hit else "converted", seconds)
                manifest.add_ir(tmp, spec.name, attr, xml.parent)
        unet_weights = sorted(p for p in (tmp / "unet").iterdir() if p.suffix in _WEIGHT_SUFFIXES)
        manifest.model_hash = sha256_files(unet_weights)[:10] if unet_weights else ""
        (tmp / MANIFEST).write_text(manifest.as_json())
    logger.info("exported %s to %s in %.0fs", source.name, out_dir, time.perf_counter() - started)
    return manifest
