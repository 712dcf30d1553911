"""Live previews: a cheap picture of the image forming, straight from the latents (A1111's "Approx cheap").

Each latent pixel becomes an RGB pixel through a fixed linear map (4 latent channels → 3 colours) fitted once
against the real VAE decoder, so a preview costs a 4×3 matrix product at latent resolution (1/8 of the image's
side) and needs no extra weights. The factors are published numbers:
- SD 1.x / 2.x: Birch-san, "Decoding latents to RGB without upscaling" (discuss.huggingface.co/t/23204), fitted on
  SD 1.4's VAE, which SD 2.x shares.
- SDXL: InvokeAI's fit for the SDXL VAE (invokeai/app/util/step_callback.py, Apache-2.0).
A model whose latents do not have 4 channels gets a grey preview of its first channel (better than none).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

_SD_FACTORS = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)
_SDXL_FACTORS = (
    (0.3816, 0.4930, 0.5320),
    (-0.3753, 0.1631, 0.1739),
    (0.1770, 0.3588, -0.2048),
    (-0.4350, -0.2644, -0.4289),
)


def factors_for(sdxl: bool) -> torch.Tensor:
    """The latent → RGB map of the model family, [4, 3] float32."""
    return torch.tensor(_SDXL_FACTORS if sdxl else _SD_FACTORS, dtype=torch.float32)


def noise_scale(scheduler: object) -> float:
    """What the latents are divided by to show them at unit scale: sqrt(sigma² + 1) for the sigma-space (k-diffusion
    style) schedulers, whose latents after a step are the image plus sigma × noise; 1 for the others (DDIM, PNDM,
    ...), whose latents stay at unit variance. Without it, early previews of Euler & co. are saturated noise."""
    sigmas, index = getattr(scheduler, "sigmas", None), getattr(scheduler, "step_index", None)
    if sigmas is None or index is None or len(sigmas) == 0:
        return 1.0
    sigma = float(sigmas[min(int(index), len(sigmas) - 1)])
    return (sigma * sigma + 1.0) ** 0.5


def approximate(latents: torch.Tensor, factors: torch.Tensor, scale: float = 1.0) -> Image.Image:
    """The first image of a [batch, channels, h, w] latent batch, divided by `scale` (noise_scale), as an RGB
    picture at latent resolution."""
    latent = latents[0].detach().to("cpu", torch.float32) / scale
    if latent.shape[0] == factors.shape[0]:
        rgb = torch.einsum("chw,cr->hwr", latent, factors)
    else:
        rgb = latent[0].unsqueeze(-1).expand(-1, -1, 3)
    pixels = ((rgb.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8).numpy()
    return Image.fromarray(np.ascontiguousarray(pixels), mode="RGB")
