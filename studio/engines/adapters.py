"""Per-request LoRAs and VAE choice on a loaded model (torch, diffusers' LoRA loading with peft).

LoRA: the task pipelines of a model share their UNet and text encoders, and adapters live in those modules, so a
`LoraSet` keeps, per set of modules, the adapters it loaded (a small LRU: evicted ones are deleted with
``delete_adapters``, so memory does not pile up across requests), and `activate` sets the ones a request asks
for with their weights (``set_adapters``) or switches them all off (``disable_lora``) for a request without tags.
Base weights are never changed (nothing is fused): a switched-off adapter leaves every layer computing exactly
what it computed before any LoRA was loaded, so a request without tags gives the same pixels as before.
Activation changes shared modules: call it under the engine's run lock, right before the generation it is for.

A1111's rules: ``<lora:NAME:WEIGHT>`` selects MODELS_DIR/Lora/NAME.* (see studio.models.lora for how names
match); an unknown name, or a file that fails to load, is a warning in the result and the image is still made;
weight 0 is the same as no tag; the same name twice adds the weights (with a warning).

VAE: `VaeCache.get(name, pipe)` gives the AutoencoderKL of a file in MODELS_DIR/VAE/ (built with the model's own
VAE config, kept in a small LRU) or None for "Automatic" (the model's own); `VaeCache.taesd(pipe, encode)` the
tiny "Approx (TAESD)" VAE (studio.models.taesd). It is a torch module either way, so it also runs beside an
OpenVINO-compiled UNet; LoRAs cannot change compiled networks and are refused there.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import sys
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from diffusers import AutoencoderKL, DiffusionPipeline
from peft.tuners.tuners_utils import BaseTunerLayer

from studio.engine import ModelLoadError
from studio.models import taesd as tiny
from studio.models.lora import LoraFile, discover_loras, find_lora, lora_dir, lora_hash, read_pickled_lora
from studio.models.vae import VaeFile, discover_vaes, find_vae, load_vae, vae_dir
from studio.types import AUTOMATIC, RequestError

logger = logging.getLogger(__name__)

DEFAULT_MAX_LORAS = 4  # adapters kept loaded per model (the bench cycles through 3 and back to none)
DEFAULT_MAX_VAES = 2
MODEL_OWN_VAE = (AUTOMATIC, "None")  # A1111's API also says "None" for the checkpoint's own VAE
_LISTED = 20  # names shown in an "available: ..." message


class LoraRequest(Protocol):
    """A `<lora:NAME:WEIGHT>` tag (studio.prompts.LoraTag)."""

    @property
    def name(self) -> str: ...

    @property
    def weight(self) -> float: ...


@dataclass(frozen=True)
class ActiveLora:
    """A LoRA applied to a request: the name as the tag wrote it, its weight, the file and A1111's short hash
    (for the infotext's ``Lora hashes: "name: hash"``)."""

    name: str
    weight: float
    path: Path
    hash: str


@dataclass
class _Adapter:
    adapter: str  # the peft adapter name (files' names may hold characters peft does not accept)
    stamp: tuple[int, int]  # (mtime_ns, size) of the file when it was loaded: a changed file is loaded again


@dataclass
class _Group:
    """The adapters loaded into one set of modules (a UNet and its text encoders), least recently used first."""

    loaded: OrderedDict[str, _Adapter] = field(default_factory=OrderedDict)  # resolved path -> adapter
    current: tuple[tuple[str, float], ...] | None = None  # what is set now: () = LoRA off, None = must be set
    layers: list[BaseTunerLayer] | None = None  # the peft layers in the modules; None = look them up again


def _listing(names: list[str]) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:_LISTED])
    return shown + (f", … ({len(names)} in all)" if len(names) > _LISTED else "")


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


def _denoiser(pipe: DiffusionPipeline) -> torch.nn.Module:
    module = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if module is None:
        raise RequestError("prompt", type(pipe).__name__, "this pipeline has no UNet to apply a LoRA to")
    return module


# peft warns each time a second adapter goes into a model; several adapters per model is what a LoraSet is for.
warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute", category=UserWarning)


@contextlib.contextmanager
def _quiet_adapter_reports() -> Iterator[None]:
    """transformers' load report for a text encoder's adapter lists every *other* loaded adapter's weights as
    "MISSING ... newly initialized": untrue (they keep their values; tests/unit/engines/test_adapters.py checks it)
    and alarming in a server log, so that logger is held at ERROR while a LoRA loads. Errors still raise."""
    reporter = logging.getLogger("transformers.integrations.peft")
    level = reporter.level
    reporter.setLevel(logging.ERROR)
    try:
        yield
    finally:
        reporter.setLevel(level)


def _runs_on_openvino(pipe: DiffusionPipeline) -> bool:
    # Only studio.engines.openvino_modules redirects modules: if it was never imported, nothing runs on OpenVINO
    # (and importing it here would import openvino for every torch request).
    redirect = sys.modules.get("studio.engines.openvino_modules")
    if redirect is None:
        return False
    names = ("unet", "transformer", "text_encoder", "text_encoder_2")
    return any(redirect.is_openvino_module(getattr(pipe, n)) for n in names if getattr(pipe, n, None) is not None)


class LoraSet:
    """The LoRA files of a models folder, applied per request to whichever loaded model a pipeline belongs to."""

    def __init__(self, models_dir: Path, max_loaded: int = DEFAULT_MAX_LORAS):
        if max_loaded < 1:
            raise ValueError(f"max_loaded must be at least 1, got {max_loaded}")
        self.models_dir = Path(models_dir)
        self.max_loaded = max_loaded
        self._groups: weakref.WeakKeyDictionary[torch.nn.Module, _Group] = weakref.WeakKeyDictionary()
        self._names = itertools.count()
        self._lock = threading.Lock()

    def available(self) -> list[LoraFile]:
        """The LoRA files in MODELS_DIR/Lora/ now (the folder is read on every call: files may be added any time)."""
        return discover_loras(self.models_dir)

    def activate(self, pipe: DiffusionPipeline, tags: Sequence[LoraRequest]) -> tuple[list[ActiveLora], list[str]]:
        """Make `pipe`'s modules apply exactly the LoRAs of `tags` (none: all off). Returns the LoRAs applied and
        the warnings for the result (unknown names, files that failed to load, repeated names).

        Raises RequestError for a non-finite weight, and for LoRAs on an OpenVINO-compiled model.
        """
        with self._lock:
            wanted, warnings = self._resolve(tags)
            if wanted and _runs_on_openvino(pipe):
                first = wanted[0]
                raise RequestError(
                    "prompt",
                    f"<lora:{first.name}:{first.weight:g}>",
                    "LoRAs need the torch engine: the OpenVINO engine runs compiled networks that adapters cannot "
                    "change (start the studio with --engine torch, or remove the tag)",
                )
            if wanted and not hasattr(pipe, "load_lora_weights"):
                raise RequestError("prompt", wanted[0].name, f"a {type(pipe).__name__} cannot load LoRAs")
            group = self._groups.setdefault(_denoiser(pipe), _Group())
            keep = {str(lora.path.resolve()) for lora in wanted}
            active: list[ActiveLora] = []
            settings: list[tuple[str, float]] = []
            for lora in wanted:
                try:
                    adapter = self._ensure_loaded(pipe, group, lora.path, keep)
                    short_hash = lora_hash(lora.path)
                except (ModelLoadError, OSError) as err:
                    warnings.append(f'lora: "{lora.name}" was not applied: {err}')
                    continue
                active.append(ActiveLora(lora.name, lora.weight, lora.path, short_hash))
                settings.append((adapter, lora.weight))
            self._evict(pipe, group, keep, room=0)  # a request with more LoRAs than max_loaded overfilled it
            self._apply(pipe, group, tuple(settings))
        return active, warnings

    def deactivate(self, pipe: DiffusionPipeline) -> None:
        """Switch every LoRA off in `pipe`'s modules (what `activate(pipe, [])` does)."""
        self.activate(pipe, [])

    def loaded(self, pipe: DiffusionPipeline) -> list[Path]:
        """The files whose adapters are loaded in `pipe`'s modules now, least recently used first."""
        with self._lock:
            group = self._groups.get(_denoiser(pipe))
            return [Path(key) for key in group.loaded] if group else []

    def unload(self, pipe: DiffusionPipeline) -> None:
        """Delete every adapter this set loaded into `pipe`'s modules."""
        with self._lock:
            group = self._groups.get(_denoiser(pipe))
            if group is not None:
                if group.loaded:
                    pipe.delete_adapters([entry.adapter for entry in group.loaded.values()])
                group.loaded.clear()
                group.current = None

    def _resolve(self, tags: Sequence[LoraRequest]) -> tuple[list[_Wanted], list[str]]:
        """The files the tags select, weights summed per file, zero weights dropped; warnings for the rest."""
        if not tags:
            return [], []
        files = self.available()
        warnings: list[str] = []
        chosen: dict[Path, _Wanted] = {}
        for tag in tags:
            weight = float(tag.weight)
            if not math.isfinite(weight):
                raise RequestError("prompt", f"<lora:{tag.name}:{tag.weight}>", "a LoRA weight must be a finite number")
            found = find_lora(tag.name, files)
            if found is None:
                names = sorted({lora.name for lora in files}, key=str.lower)
                warnings.append(
                    f'lora: no LoRA named "{tag.name}" in {lora_dir(self.models_dir)} (available: {_listing(names)})'
                )
                continue
            if found.path in chosen:
                previous = chosen[found.path]
                chosen[found.path] = _Wanted(previous.name, previous.weight + weight, found.path)
                warnings.append(
                    f'lora: "{tag.name}" is used more than once; its weights are added ({chosen[found.path].weight:g})'
                )
            else:
                chosen[found.path] = _Wanted(tag.name, weight, found.path)
        return [lora for lora in chosen.values() if lora.weight != 0.0], warnings

    def _ensure_loaded(self, pipe: DiffusionPipeline, group: _Group, path: Path, keep: set[str]) -> str:
        """The adapter of `path` in the group's modules, loading it (and evicting the least recently used adapters
        that this request does not use) when needed. Raises ModelLoadError when the file cannot be loaded."""
        key = str(path.resolve())
        stamp = _stamp(path)
        entry = group.loaded.get(key)
        if entry is not None and entry.stamp == stamp:
            group.loaded.move_to_end(key)
            return entry.adapter
        if entry is not None:  # the file changed since it was loaded
            self._delete(pipe, group, key)
        self._evict(pipe, group, keep, room=1)
        adapter = f"lora{next(self._names)}"
        group.current = None  # loading activates the new adapter: the next _apply must set everything again
        group.layers = None  # and may wrap layers no earlier LoRA touched
        try:
            with _quiet_adapter_reports():
                if path.suffix.lower() == ".safetensors":
                    pipe.load_lora_weights(str(path), adapter_name=adapter, use_safetensors=True, local_files_only=True)
                else:
                    pipe.load_lora_weights(read_pickled_lora(path), adapter_name=adapter)
        except ModelLoadError:
            raise
        except Exception as err:
            self._discard(pipe, adapter)
            reason = " ".join(str(err).split())[:300]
            raise ModelLoadError(f"{path.name} does not fit this model ({type(err).__name__}: {reason})") from err
        group.loaded[key] = _Adapter(adapter, stamp)
        logger.info("loaded LoRA %s as adapter %s (%d loaded)", path.name, adapter, len(group.loaded))
        return adapter

    def _evict(self, pipe: DiffusionPipeline, group: _Group, keep: set[str], room: int) -> None:
        """Delete the least recently used adapters not in `keep` until `room` more fit within max_loaded."""
        for key in [k for k in group.loaded if k not in keep]:
            if len(group.loaded) + room <= self.max_loaded:
                break
            self._delete(pipe, group, key)

    def _delete(self, pipe: DiffusionPipeline, group: _Group, key: str) -> None:
        entry = group.loaded.pop(key)
        pipe.delete_adapters([entry.adapter])
        group.current = None
        group.layers = None
        logger.info("unloaded LoRA %s (adapter %s)", Path(key).name, entry.adapter)

    @staticmethod
    def _discard(pipe: DiffusionPipeline, adapter: str) -> None:
        """Remove whatever a failed load left of `adapter` (e.g. the UNet part when the text encoder part failed)."""
        present = {name for names in pipe.get_list_adapters().values() for name in names}
        if adapter in present:
            pipe.delete_adapters([adapter])

    @staticmethod
    def _apply(pipe: DiffusionPipeline, group: _Group, settings: tuple[tuple[str, float], ...]) -> None:
        """Switch the group's peft layers to exactly `settings` ((adapter, weight) pairs; () = every LoRA off).

        This is what diffusers' enable_lora/disable_lora/set_adapters do, on a layer list found once per load
        instead of walking every module of the UNet and text encoders (several times) per request: that walk cost
        ~18 ms per on/off switch on the demo model (measured), more than the LoRA maths. Adapters are activated in
        inference mode (no requires_grad), as generation never needs their gradients.
        """
        if settings == group.current:
            return
        if group.layers is None:
            group.layers = _tuner_layers(pipe)
        names = [adapter for adapter, _ in settings]
        for layer in group.layers:
            if not settings:
                layer.enable_adapters(False)
                continue
            scaling = getattr(layer, "scaling", {})
            present = [name for name in names if name in scaling]
            layer._disable_adapters = False  # enable_adapters(True) would re-enable grads; set_adapter follows
            layer.set_adapter(present, inference_mode=True)
            for adapter, weight in settings:
                if adapter in scaling:
                    layer.set_scale(adapter, weight)
        group.current = settings


def _tuner_layers(pipe: DiffusionPipeline) -> list[BaseTunerLayer]:
    """Every peft layer in the pipeline's LoRA-loadable modules (UNet, text encoders)."""
    layers: list[BaseTunerLayer] = []
    for component in getattr(pipe, "_lora_loadable_modules", ()):
        module = getattr(pipe, component, None)
        if isinstance(module, torch.nn.Module):
            layers.extend(sub for sub in module.modules() if isinstance(sub, BaseTunerLayer))
    return layers


@dataclass(frozen=True)
class _Wanted:
    name: str
    weight: float
    path: Path


class VaeCache:
    """VAE files from MODELS_DIR/VAE/, loaded for the model they are used with and kept in a small LRU."""

    def __init__(self, models_dir: Path, max_loaded: int = DEFAULT_MAX_VAES):
        if max_loaded < 1:
            raise ValueError(f"max_loaded must be at least 1, got {max_loaded}")
        self.models_dir = Path(models_dir)
        self.max_loaded = max_loaded
        self._cache: OrderedDict[tuple[str, ...], torch.nn.Module] = OrderedDict()
        self._lock = threading.Lock()

    def available(self) -> list[VaeFile]:
        """The VAE files in MODELS_DIR/VAE/ now (read on every call)."""
        return discover_vaes(self.models_dir)

    def file(self, name: str) -> VaeFile | None:
        """The file a request's `vae` names; None for "Automatic" (or "None"): the model's own VAE.

        Raises RequestError("vae", name, ...) listing the available names when no file has that name.
        """
        if name in MODEL_OWN_VAE:
            return None
        files = self.available()
        found = find_vae(name, files)
        if found is None:
            names = [AUTOMATIC, tiny.TAESD] + [vae.name for vae in files]
            raise RequestError(
                "vae", name, f"no VAE file of that name in {vae_dir(self.models_dir)}; available: {_listing(names)}"
            )
        return found

    def get(self, name: str, pipe: DiffusionPipeline) -> AutoencoderKL | None:
        """The AutoencoderKL to decode (and encode) with for a request's `vae`, fitted to `pipe`'s model; None
        means the model's own. Raises RequestError("vae", ...) for an unknown name or a file that cannot be used."""
        found = self.file(name)
        if found is None:
            return None
        like = pipe.vae
        config = json.dumps(dict(like.config), sort_keys=True, default=str)
        key = (str(found.path.resolve()), *map(str, _stamp(found.path)), config, str(like.dtype), str(like.device))
        return self._cached(key, name, lambda: load_vae(found.path, like))

    def taesd(self, pipe: DiffusionPipeline, *, encode: bool) -> torch.nn.Module:
        """The "Approx (TAESD)" VAE for `pipe`'s model family (an AutoencoderTiny in its VAE's dtype and device).
        `encode`: the request encodes images (img2img, inpaint, hires fix), so the encoder's weights are needed.
        Raises RequestError("vae", ...) saying where to put missing weights."""
        family = tiny.family_of(pipe)
        weights = tiny.find_taesd(self.models_dir, family)
        if weights is None:
            raise RequestError("vae", tiny.TAESD, tiny.missing_message(self.models_dir, family))
        like = pipe.vae
        key = ("taesd", family, *weights.stamp(), str(like.dtype), str(like.device))
        vae = self._cached(key, tiny.TAESD, lambda: tiny.load_taesd(weights, dtype=like.dtype, device=like.device))
        if encode and not tiny.has_encoder(vae):
            stem = tiny.FAMILIES[family][0]
            raise RequestError(
                "vae",
                tiny.TAESD,
                f"encoding images (img2img, inpaint, hires fix) needs the TAESD encoder too: put {stem}_encoder.pth "
                f"(or .safetensors) beside {weights.decoder.name if weights.decoder else stem} in {weights.location}",
            )
        return vae

    def _cached(self, key: tuple[str, ...], name: str, load: Callable[[], torch.nn.Module]) -> torch.nn.Module:
        """The module cached under `key`, loading it with `load` (a ModelLoadError becomes RequestError("vae"))."""
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
            try:
                vae = load()
            except ModelLoadError as err:
                raise RequestError("vae", name, str(err)) from err
            self._cache[key] = vae
            while len(self._cache) > self.max_loaded:
                self._cache.popitem(last=False)
            return vae
