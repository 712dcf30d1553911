"""One generation on a loaded model: what A1111 users expect, on the shared task pipelines.

`prepare()` does everything that can fail on bad input *before* the engine's run lock (images and masks, the
hires plan and its upscaler, the VAE file, clip skip), so a wrong field is refused at once. `run()` then, under
the lock:
1. activates the request's LoRAs (`<lora:name:weight>` tags, removed from the text) in the shared modules —
   or switches every LoRA off — through diffusers' peft adapters (studio.engines.adapters);
2. encodes prompt and negative prompt once with A1111's syntax, chunking and clip skip
   (studio.engines.conditioning) and passes the embeddings to the pipelines;
3. per image (seed + i): a light per-call pipeline (same modules, its own scheduler, the chosen VAE), the first
   pass, and with hires fix the upscale and an img2img second pass with a fresh generator of the same seed
   (studio.engines.hires); the infotext records everything needed to make the image again.
The shared pipelines are never mutated per request, except the LoRA adapter state, which belongs to the run lock.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, SchedulerMixin
from PIL import Image

from studio import metadata, prompts
from studio.engine import CancelToken, EngineError, GenerationCancelled, LivePreview, ProgressCallback
from studio.engines import conditioning, hires, inpaint, previews
from studio.engines.adapters import LoraSet, VaeCache
from studio.models.taesd import TAESD
from studio.models.vae import vae_hash
from studio.samplers import make_scheduler
from studio.types import GenerationRequest, GenerationResult, RequestError, Task

logger = logging.getLogger(__name__)


class _StopRequested(Exception):
    """Raised inside the diffusers step callback to leave the denoising loop at once."""


@dataclass
class Prepared:
    """A validated request made ready to run: everything that can be refused has been checked."""

    request: GenerationRequest
    pipe: DiffusionPipeline
    prompt: str  # without LoRA tags
    negative_prompt: str
    loras: list[prompts.LoraTag]
    task_args: dict[str, Any]
    steps_per_image: int
    hires: hires.HiresPlan | None = None
    upscale_model: hires.UpscaleModel | None = None
    vae: AutoencoderKL | None = None  # None: the model's own
    vae_name: str | None = None
    vae_hash: str | None = None
    inpaint: inpaint.InpaintPlan | None = None  # how inpaint results are pasted back (inpaint requests only)
    warnings: list[str] = field(default_factory=list)


@dataclass
class Model:
    """What a run needs to know about the loaded model."""

    pipes: Mapping[Task, DiffusionPipeline]
    name: str
    hash: str
    backend: str


class Generation:
    """The per-request path of LocalEngine, with the resources that outlive a request (loaded LoRAs, VAEs and
    upscaler networks, each in a small cache)."""

    def __init__(self, models_dir: Path, *, upscaler_device: str = "cpu"):
        self.models_dir = Path(models_dir)
        self.loras = LoraSet(self.models_dir)
        self.vaes = VaeCache(self.models_dir)
        self.upscaler_loader = hires.SpandrelLoader(device=upscaler_device)

    def prepare(self, model: Model, request: GenerationRequest) -> Prepared:
        """Check and prepare a validated request (seed resolved); RequestError names the field."""
        task = request.task
        pipe = model.pipes.get(task)
        if pipe is None:
            raise RequestError(
                "task", task.value, f"the loaded model {model.name} is an inpainting model; load a base model"
            )
        warnings: list[str] = []
        prompt, tags = prompts.extract_loras(request.prompt, "prompt")
        negative, negative_tags = prompts.extract_loras(request.negative_prompt, "negative_prompt")
        conditioning.check_clip_skip(pipe, request.clip_skip)
        task_args, inpaint_plan = _task_args(pipe, request, warnings)
        prepared = Prepared(
            request=request,
            pipe=pipe,
            prompt=prompt,
            negative_prompt=negative,
            loras=_merge_tags(tags + negative_tags),
            task_args=task_args,
            steps_per_image=_expected_steps(request),
            inpaint=inpaint_plan,
            warnings=warnings,
        )
        if request.hires:
            schedule_limit = model.pipes[Task.IMG2IMG].scheduler.config.num_train_timesteps
            prepared.hires = hires.plan_hires(request, self.models_dir, max_schedule_steps=schedule_limit)
            prepared.upscale_model = hires.load_upscale_model(prepared.hires.upscaler, self.upscaler_loader)
            prepared.steps_per_image = prepared.hires.total_steps
        if request.vae == TAESD:
            encodes = request.task is not Task.TXT2IMG or request.hires
            prepared.vae, prepared.vae_name = self.vaes.taesd(pipe, encode=encodes), TAESD
            return prepared
        vae_file = self.vaes.file(request.vae)
        if vae_file is not None:
            prepared.vae = self.vaes.get(request.vae, pipe)
            prepared.vae_name, prepared.vae_hash = vae_file.name, vae_hash(vae_file.path)
        return prepared

    def run(
        self,
        model: Model,
        prepared: Prepared,
        on_progress: ProgressCallback | None,
        cancel: CancelToken | None,
        preview: LivePreview | None = None,
    ) -> GenerationResult:
        """Generate every image of a prepared request (call under the engine's run lock)."""
        started = time.perf_counter()
        request = prepared.request
        result = GenerationResult(
            images=[], seeds=[], infotexts=[], request=request, model=model.name, backend=model.backend,
            warnings=prepared.warnings,
        )  # fmt: skip
        try:
            active, lora_warnings = self.loras.activate(prepared.pipe, prepared.loras)
            result.warnings.extend(lora_warnings)
            embeds = conditioning.encode_prompts(
                prepared.pipe, prepared.prompt, prepared.negative_prompt, request.clip_skip
            )
            result.warnings.extend(embeds.warnings)
            result.timings["encode"] = time.perf_counter() - started
            lora_hashes = {lora.name: lora.hash for lora in active}
            runner = _ImageRunner(model, prepared, embeds.kwargs(), result, on_progress, cancel, preview)
            for index, seed in enumerate(request.seeds()):
                image = runner.image(index, seed)
                result.images.append(image)
                result.seeds.append(seed)
                result.infotexts.append(
                    metadata.format_infotext(
                        request,
                        seed,
                        model=model.name,
                        model_hash=model.hash,
                        vae=prepared.vae_name or "",
                        vae_hash=prepared.vae_hash or "",
                        lora_hashes=lora_hashes,
                    )
                )
        except EngineError as err:  # keep what was finished: the caller saves it
            if err.partial is None and result.images:
                err.partial = result
            raise
        result.timings["generate"] = time.perf_counter() - started
        return result


class _ImageRunner:
    """Runs the passes of one image after another, reporting progress over the whole run."""

    def __init__(
        self,
        model: Model,
        prepared: Prepared,
        embeds: dict[str, torch.Tensor],
        result: GenerationResult,
        on_progress: ProgressCallback | None,
        cancel: CancelToken | None,
        preview: LivePreview | None = None,
    ):
        self.model, self.prepared, self.embeds, self.result = model, prepared, embeds, result
        self.on_progress, self.cancel = on_progress, cancel
        self.preview = preview if preview is not None and preview.every > 0 else None
        self.preview_factors = previews.factors_for(conditioning.is_sdxl(prepared.pipe)) if self.preview else None
        self.count = len(prepared.request.seeds())
        self.total = prepared.steps_per_image * self.count

    def image(self, index: int, seed: int) -> Image.Image:
        if self.cancel is not None and self.cancel.is_set():
            raise GenerationCancelled(f"stopped after {index} of {self.count} images", partial=self.result)
        prepared = self.prepared
        offset = index * prepared.steps_per_image
        plan = prepared.hires
        if plan is None:
            latent_fill = prepared.inpaint.latent_fill if prepared.inpaint is not None else None
            array = self._pass(prepared.pipe, index, seed, offset, dict(prepared.task_args), "np", latent_fill)
            image = _to_pil(array)
            if prepared.inpaint is not None:
                image = inpaint.paste_back(prepared.pipe, prepared.inpaint, image)
            return image
        first = self._pass(prepared.pipe, index, seed, offset, plan.first_pass_args(), None)
        upscaled = hires.upscale(plan, first, prepared.upscale_model)
        second_pipe = self.model.pipes[Task.IMG2IMG]
        array = self._pass(second_pipe, index, seed, offset + plan.first_steps, plan.second_pass_args(upscaled), "np")
        return _to_pil(array)

    def _pass(
        self,
        pipe: DiffusionPipeline,
        index: int,
        seed: int,
        offset: int,
        args: dict[str, Any],
        output_type: str | None,
        latent_fill: str | None = None,
    ) -> Any:
        """One denoising pass with a light per-call pipeline; returns the output images (np) or latents.
        `latent_fill`: the inpaint masked-content mode that replaces the masked latents (studio.engines.inpaint)."""
        request = self.prepared.request
        call_pipe = call_pipeline(
            pipe, make_scheduler(request.sampler, request.scheduler, pipe.scheduler.config), vae=self.prepared.vae
        )
        call_pipe.set_progress_bar_config(disable=True)
        last: dict[str, torch.Tensor | None] = {}
        args.setdefault("num_inference_steps", request.steps)
        if output_type is not None:
            args["output_type"] = output_type
        generator = torch.Generator("cpu").manual_seed(seed)
        try:
            with torch.inference_mode():
                if latent_fill is not None:
                    dtype = self.embeds["prompt_embeds"].dtype
                    args.update(inpaint.masked_latents(call_pipe, args, generator, seed, latent_fill, dtype))
                output = call_pipe(
                    **self.embeds,
                    guidance_scale=request.cfg_scale,
                    generator=generator,
                    callback_on_step_end=self._on_step(offset, last),
                    callback_on_step_end_tensor_inputs=["latents"],
                    **args,
                )
        except _StopRequested:
            raise GenerationCancelled(
                f"stopped during image {index + 1} of {self.count}", partial=self.result
            ) from None
        except (RequestError, GenerationCancelled):
            raise
        except Exception as exc:
            logger.exception("generation failed")
            raise EngineError(f"generation failed ({type(exc).__name__}): {exc}") from exc
        if args["output_type"] == "latent":
            return output.images
        array = output.images[0]
        return array if _finite(array) else decode_fp32(call_pipe, last.get("latents"), array)

    def _on_step(self, offset: int, last: dict[str, torch.Tensor | None]) -> Callable[..., dict[str, Any]]:
        def on_step(_pipe: DiffusionPipeline, step: int, _t: torch.Tensor, kwargs: dict[str, Any]) -> dict[str, Any]:
            last["latents"] = latents = kwargs.get("latents")
            done = min(offset + step + 1, self.total)
            if self.on_progress is not None:
                self.on_progress(done, self.total)
            if self.preview is not None and latents is not None and self.preview.wanted(done, self.total):
                scale = previews.noise_scale(_pipe.scheduler)
                self.preview.show(previews.approximate(latents, self.preview_factors, scale), done, self.total)
            if self.cancel is not None and self.cancel.is_set():
                raise _StopRequested
            return {}

        return on_step


def _merge_tags(tags: list[prompts.LoraTag]) -> list[prompts.LoraTag]:
    """One tag per LoRA name (the prompt's and the negative prompt's together; weights add, as in one prompt)."""
    merged: dict[str, prompts.LoraTag] = {}
    for tag in tags:
        previous = merged.get(tag.name)
        merged[tag.name] = tag if previous is None else prompts.LoraTag(tag.name, previous.weight + tag.weight)
    return list(merged.values())


def _task_args(
    pipe: DiffusionPipeline, request: GenerationRequest, warnings: list[str]
) -> tuple[dict[str, Any], inpaint.InpaintPlan | None]:
    """Pipeline keyword arguments specific to the task (prepared images and mask), and for inpainting the plan to
    paste the results back."""
    size = (request.width, request.height)
    if request.task is Task.TXT2IMG:
        return {"width": request.width, "height": request.height}, None
    effective = int(request.steps * request.strength)
    if effective < 1:
        raise RequestError(
            "strength",
            request.strength,
            f"{request.steps} steps x strength {request.strength:g} leaves no denoising step; raise steps or strength",
        )
    if request.task is Task.INPAINT:
        return inpaint.prepare(pipe, request, warnings)
    image = request.image.convert("RGB")
    if image.size != size:
        warnings.append(f"image: resized from {image.width}x{image.height} to {request.width}x{request.height}")
        image = image.resize(size, resample=Image.Resampling.LANCZOS)
    return {"image": image, "strength": request.strength}, None


def call_pipeline(
    pipe: DiffusionPipeline, scheduler: SchedulerMixin, *, vae: AutoencoderKL | None = None
) -> DiffusionPipeline:
    """A light per-call pipeline: the same modules and config values, its own scheduler (and VAE, when chosen).

    This is `from_pipe` without its `.to()` walk over every module, which cost 8-19 ms per call (measured by
    `python -m bench`: engine_vs_raw 1.035 -> 1.008) and logged two warnings per call.
    """
    cls = type(pipe)
    names = [n for n in inspect.signature(cls.__init__).parameters if n != "self"]
    components = pipe.components
    kwargs = {
        n: components[n] if n in components else pipe.config[n] for n in names if n in components or n in pipe.config
    }
    kwargs["scheduler"] = scheduler
    if vae is not None:
        kwargs["vae"] = vae
    call = cls(**kwargs)
    if "_name_or_path" in pipe.config:
        call.register_to_config(_name_or_path=pipe.config["_name_or_path"])
    return call


def decode_fp32(pipe: DiffusionPipeline, latents: torch.Tensor | None, array: np.ndarray) -> np.ndarray:
    """fp16 VAEs can overflow to NaN (black images); decode the final latents again in fp32."""
    vae = pipe.vae
    if latents is None or vae.dtype == torch.float32:
        raise EngineError("the model produced NaN pixels (a broken checkpoint or an fp32 overflow)")
    logger.warning("NaN in fp16 VAE decode; decoding again in fp32")
    with torch.inference_mode():
        vae.to(torch.float32)
        try:
            decoded = vae.decode(latents.to(torch.float32) / vae.config.scaling_factor, return_dict=False)[0]
        finally:
            vae.to(torch.float16)
    array = pipe.image_processor.postprocess(decoded, output_type="np")[0]
    if not _finite(array):
        raise EngineError("the model produced NaN pixels even with the VAE in fp32")
    return array


def _expected_steps(request: GenerationRequest) -> int:
    if request.task is Task.TXT2IMG:
        return request.steps
    return max(1, int(request.steps * request.strength))


def _finite(array: np.ndarray) -> bool:
    return bool(np.isfinite(array).all())


def _to_pil(array: np.ndarray) -> Image.Image:
    """The same float→uint8 conversion diffusers' numpy_to_pil does."""
    return Image.fromarray((array * 255).round().astype(np.uint8))
