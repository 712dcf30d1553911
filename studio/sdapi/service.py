"""The A1111 API's behaviour, without HTTP: what each `/sdapi/v1` endpoint answers (studio.serving.sdapi is the
router). Every answer is a JSON-ready value; anything else is an ApiError with A1111's status and body.

Generation: the body is translated and validated (studio.sdapi.fields) before it queues; then, holding the
engine's queue (studio.jobs, shared with the UI), the model named by override_settings is loaded if needed, the
batches run one after another (image i of the run has seed + i; `/skip` ends the current batch, `/interrupt` the
run; the images finished before either are returned, with a warning saying what was cut), the previous model is
restored, and the images come back as base64 PNGs carrying their infotext.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from studio import __version__
from studio.config import DEFAULT_LIVE_PREVIEW_EVERY
from studio.engine import EngineError, GenerationCancelled
from studio.jobs import Job
from studio.models.taesd import TAESD
from studio.sdapi import fields, listing, pnginfo
from studio.sdapi.errors import ApiError, engine_error, field_error, invalid
from studio.sdapi.hosts import Host
from studio.types import AUTOMATIC, GenerationRequest, GenerationResult, RequestError

logger = logging.getLogger(__name__)

SESSION = "sdapi"  # the job session of API requests (a UI Stop never reaches them; /interrupt does)
# Options POST /options accepts at exactly these values only (anything else cannot be honoured here).
_FIXED_OPTIONS = {"samples_format": ("png",), "eta_noise_seed_delta": (0, None)}


class SdapiService:
    """One A1111 API over a Host (the studio or the serving app)."""

    def __init__(self, host: Host):
        self.host = host
        self.options = fields.ApiOptions()
        self.hashes = listing.HashCache()
        self._ignored_options: set[str] = set()
        self._options_lock = threading.Lock()
        self._interval = host.jobs.preview_every or DEFAULT_LIVE_PREVIEW_EVERY  # kept while previews are off

    # ---- generation ------------------------------------------------------------------------------------------
    def txt2img(self, payload: Any) -> dict[str, Any]:
        return self._generate(payload, fields.TXT2IMG)

    def img2img(self, payload: Any) -> dict[str, Any]:
        return self._generate(payload, fields.IMG2IMG)

    def _generate(self, payload: Any, kind: str) -> dict[str, Any]:
        with self._options_lock:
            options = fields.ApiOptions(self.options.clip_skip, self.options.vae)
        translation = fields.translate(payload, kind, options, self.host.limits)
        if translation.save_images and not self.host.keeps_outputs:
            translation.warnings.append("save_images: this server keeps no outputs; the images are only returned")
        target = self._checkpoint(translation.model, ("override_settings", "sd_model_checkpoint"))
        request = translation.request.with_resolved_seed()
        try:
            with self.host.jobs.run(kind, session=SESSION, job_count=translation.n_iter) as job:
                with self._model(target, translation.restore, job):
                    results, notes = self._batches(translation, request, job)
        except RequestError as exc:
            raise field_error(exc, translation.names) from None
        except EngineError as exc:
            raise engine_error(exc) from None
        if translation.persist:
            with self._options_lock:
                self.options = fields.ApiOptions(**translation.persist)
        return self._response(translation, request, results, notes, job)

    def _batches(
        self, translation: fields.Translation, request: GenerationRequest, job: Job
    ) -> tuple[list[GenerationResult], list[str]]:
        """Run the n_iter batches; a skipped batch keeps its finished images, an interrupt ends the run."""
        results: list[GenerationResult] = []
        notes: list[str] = []
        for number in range(translation.n_iter):
            if job.interrupted:
                notes.append(f"interrupted: batches {number + 1} to {translation.n_iter} were not run")
                break
            job.start_batch(number)
            batch = request.replace(seed=request.seed + number * translation.batch_size)
            try:
                results.append(self.host.generate(batch, job, save=translation.save_images))
            except GenerationCancelled as stopped:
                kept = stopped.partial.images if stopped.partial is not None else []
                if kept:
                    results.append(stopped.partial)
                what = "interrupted" if job.interrupted else "skipped"
                notes.append(
                    f"{what}: batch {number + 1} of {translation.n_iter} stopped ({stopped}); "
                    f"{len(kept)} of its {translation.batch_size} image(s) returned"
                )
        return results, notes

    @contextmanager
    def _model(self, target: listing.Checkpoint | None, restore: bool, job: Job) -> Iterator[None]:
        """Load `target` for this request (if it is not loaded) and, with `restore`, the previous model after."""
        previous = self._loaded_spec()
        if target is None or target.spec == previous:
            yield
            return
        self._load(target, job)
        try:
            yield
        finally:
            if restore and previous:
                job.textinfo = f"Restoring {previous}"
                try:
                    self.host.load_model(previous)
                except EngineError as err:  # the request's images are made; say why the model stayed switched
                    logger.error("could not restore the model %s after an override: %s", previous, err)

    def _load(self, target: listing.Checkpoint, job: Job) -> None:
        job.textinfo = f"Loading {target.title}"
        logger.info("sdapi: loading %s", target.title)
        self.host.load_model(target.spec)
        job.textinfo = None

    def _loaded_spec(self) -> str | None:
        status = self.host.engine().status()
        return status.details.get("location") if status.loaded else None

    def _response(
        self,
        translation: fields.Translation,
        request: GenerationRequest,
        results: list[GenerationResult],
        notes: list[str],
        job: Job,
    ) -> dict[str, Any]:
        from studio.wire.codec import image_to_base64

        warnings = list(dict.fromkeys([*translation.warnings, *notes, *(w for r in results for w in r.warnings)]))
        for note in warnings:
            logger.info("sdapi %s: %s", translation.kind, note)
        images = []
        if translation.send_images:
            for result in results:
                texts = result.infotexts or [""] * len(result.images)
                images.extend(image_to_base64(image, text) for image, text in zip(result.images, texts, strict=True))
        info = build_info(translation, request, results, warnings, job.timestamp)
        return {"images": images, "parameters": translation.parameters, "info": json.dumps(info)}

    # ---- options and models ----------------------------------------------------------------------------------
    def _checkpoints(self) -> tuple[list[listing.Checkpoint], listing.Checkpoint | None]:
        status = self.host.engine().status()
        entries = listing.checkpoints(status, self.host.models_dir, self.hashes)
        loaded = status.details.get("location")
        current = entries[0] if entries and status.loaded and entries[0].filename in (loaded, status.model) else None
        if current is None and status.loaded and status.backend != "local":
            current = entries[0]
        return entries, current

    def _checkpoint(self, name: str | None, loc: tuple[str, ...]) -> listing.Checkpoint | None:
        if name is None:
            return None
        entries, _ = self._checkpoints()
        return listing.find_checkpoint(name, entries, loc)

    def sd_models(self) -> list[dict[str, Any]]:
        entries, _ = self._checkpoints()
        return [entry.as_dict() for entry in entries]

    def get_options(self) -> dict[str, Any]:
        _, current = self._checkpoints()
        status = self.host.engine().status()
        with self._options_lock:
            clip_skip, vae = self.options.clip_skip, self.options.vae
        return {
            "sd_model_checkpoint": current.title if current is not None else (status.model or None),
            "sd_checkpoint_hash": (current.sha256 or current.hash) if current is not None else None,
            "CLIP_stop_at_last_layers": clip_skip,
            "sd_vae": vae,
            "sd_vae_decode_method": "TAESD" if vae == TAESD else "Full",
            "samples_format": "png",
            "eta_noise_seed_delta": 0,
            "samples_save": self.host.keeps_outputs,
            "live_previews_enable": self.host.jobs.preview_every > 0,
            "show_progress_every_n_steps": self._preview_interval(),
        }

    def set_options(self, payload: Any) -> None:
        """A partial options dict: the model switches, CLIP skip and VAE are kept for later API requests; unknown
        keys are ignored (Open WebUI posts back the whole dict it read)."""
        if not isinstance(payload, dict):
            raise invalid((), f"must be a JSON object, got {type(payload).__name__}", type(payload).__name__)
        with self._options_lock:
            clip_skip, vae = self.options.clip_skip, self.options.vae
        target = None
        previews_on, interval = self.host.jobs.preview_every > 0, self._preview_interval()
        for key, value in payload.items():
            if value is None:
                continue
            if key == "live_previews_enable":
                if not isinstance(value, bool):
                    raise invalid(key, "must be true or false", value)
                previews_on = value
            elif key == "show_progress_every_n_steps":
                if isinstance(value, bool) or not isinstance(value, int) or not -1 <= value <= 1000:
                    raise invalid(key, "must be a whole number of steps from -1 to 1000 (-1, 0: no previews)", value)
                previews_on, interval = value > 0 and previews_on, value if value > 0 else interval
            elif key == "sd_model_checkpoint":
                if not isinstance(value, str):
                    raise invalid(key, "must be a checkpoint title from /sdapi/v1/sd-models", value)
                target = self._checkpoint(value, (key,))
            elif key == "CLIP_stop_at_last_layers":
                clip_skip = _checked(key, value, "clip_skip")
            elif key == "sd_vae":
                vae = self._vae(value)
            elif key == "sd_vae_decode_method":
                vae = fields.decode_method_vae(key, value, vae)
            elif key in _FIXED_OPTIONS:
                if value not in _FIXED_OPTIONS[key]:
                    raise invalid(key, f"this studio supports only {_FIXED_OPTIONS[key][0]!r}", value)
            elif key not in self._ignored_options:
                self._ignored_options.add(key)
                logger.debug("sdapi: option %r is not used here; ignored", key)
        if target is not None and target.spec != self._loaded_spec():
            try:
                with self.host.jobs.run("load model", session=SESSION) as job:
                    self._load(target, job)
            except EngineError as exc:
                raise engine_error(exc) from None
        with self._options_lock:
            self.options = fields.ApiOptions(clip_skip, vae)
            self._interval = interval
        self.host.jobs.preview_every = interval if previews_on else 0

    def _preview_interval(self) -> int:
        """The live preview interval in steps: the tracker's while previews are on, else the last one set."""
        return self.host.jobs.preview_every or self._interval

    def _vae(self, value: Any) -> str:
        from studio.models.vae import discover_vaes, find_vae

        if not isinstance(value, str):
            raise invalid("sd_vae", "must be a VAE name from /sdapi/v1/sd-vae, Automatic or None", value)
        if value in ("None", AUTOMATIC, ""):
            return AUTOMATIC
        if value == TAESD:
            return TAESD
        found = discover_vaes(self.host.models_dir)
        if find_vae(value, found) is None:
            names = ", ".join(["Automatic", "None", TAESD, *(v.name for v in found)])
            raise invalid("sd_vae", f"unknown VAE {value!r}; available: {names}", value)
        return value

    # ---- lists, progress, png-info ---------------------------------------------------------------------------
    def samplers(self) -> list[dict[str, Any]]:
        return listing.samplers(self.host.engine().samplers())

    def schedulers(self) -> list[dict[str, Any]]:
        return listing.schedulers()

    def upscalers(self) -> list[dict[str, Any]]:
        return listing.upscalers(self.host.models_dir)

    def latent_upscale_modes(self) -> list[dict[str, Any]]:
        return listing.latent_upscale_modes()

    def sd_vae(self) -> list[dict[str, Any]]:
        return listing.vaes(self.host.models_dir)

    def loras(self) -> list[dict[str, Any]]:
        return listing.loras(self.host.models_dir)

    def progress(self, skip_current_image: bool = False) -> dict[str, Any]:
        """Whichever job runs (a UI tab's or an API request's); `current_image` is its latest live preview (a base64
        PNG at latent resolution) or null: previews off, none yet, or `skip_current_image`."""
        from studio.wire.codec import image_to_base64

        state = self.host.jobs.progress()
        preview = None if skip_current_image else self.host.jobs.preview()
        return {
            "progress": state["progress"],
            "eta_relative": state["eta_relative"],
            "state": state["state"],
            "current_image": image_to_base64(preview[0]) if preview is not None else None,
            "textinfo": state["textinfo"],
        }

    def interrupt(self) -> dict[str, Any]:
        self.host.jobs.interrupt()
        return {}

    def skip(self) -> dict[str, Any]:
        self.host.jobs.skip()
        return {}

    def png_info(self, payload: Any) -> dict[str, Any]:
        return pnginfo.png_info(payload)


def _checked(key: str, value: Any, native: str) -> Any:
    """An option value checked by GenerationRequest.validate under its request name (`native`)."""
    try:
        return getattr(GenerationRequest(prompt="", **{native: value}).validate(), native)
    except RequestError as exc:
        raise field_error(exc, {native: key}) from None


def build_info(
    translation: fields.Translation,
    request: GenerationRequest,
    results: list[GenerationResult],
    warnings: list[str],
    job_timestamp: str,
) -> dict[str, Any]:
    """A1111's `info` (serialised to a JSON string in the response) for the images returned."""
    seeds = [seed for result in results for seed in result.seeds]
    infotexts = [text for result in results for text in result.infotexts]
    parsed = pnginfo.parameters(infotexts[0]) if infotexts else {}
    strength = None
    if request.image is not None:
        strength = request.strength
    elif request.hires:
        strength = request.hires_strength
    return {
        "prompt": request.prompt,
        "all_prompts": [request.prompt] * len(seeds),
        "negative_prompt": request.negative_prompt,
        "all_negative_prompts": [request.negative_prompt] * len(seeds),
        "seed": seeds[0] if seeds else request.seed,
        "all_seeds": seeds,
        "subseed": -1,
        "all_subseeds": [-1] * len(seeds),
        "subseed_strength": 0,
        "width": request.width,
        "height": request.height,
        "sampler_name": request.sampler,
        "scheduler": request.scheduler,
        "cfg_scale": request.cfg_scale,
        "steps": request.steps,
        "batch_size": translation.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": results[0].model if results else None,
        "sd_model_hash": parsed.get("Model hash"),
        "sd_vae_name": parsed.get("VAE"),
        "sd_vae_hash": parsed.get("VAE hash"),
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": strength,
        "extra_generation_params": pnginfo.extra_generation_params(infotexts[0]) if infotexts else {},
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": [],
        "job_timestamp": job_timestamp,
        "clip_skip": request.clip_skip,
        "is_using_inpainting_conditioning": False,
        "version": f"sd-studio {__version__}",
        "warnings": warnings,
    }


__all__ = ["ApiError", "SdapiService", "build_info"]
