"""The latent → RGB approximation behind live previews."""

from __future__ import annotations

import numpy as np
import torch

from studio.engine import LivePreview
from studio.engines.previews import approximate, factors_for


def test_zero_latents_are_mid_grey_at_latent_resolution():
    image = approximate(torch.zeros(1, 4, 6, 10), factors_for(sdxl=False))
    assert image.size == (10, 6) and image.mode == "RGB"
    assert set(np.asarray(image).reshape(-1).tolist()) == {128}


def test_each_channel_maps_through_its_row_of_factors():
    latents = torch.zeros(2, 4, 2, 2)
    latents[0, 3] = 1.0  # SD's fourth channel: dark, bluish-black (all three factors negative, blue the most)
    r, g, b = np.asarray(approximate(latents, factors_for(sdxl=False)))[0, 0].tolist()
    assert b < g < r < 128
    sd, xl = factors_for(sdxl=False), factors_for(sdxl=True)
    assert sd.shape == xl.shape == (4, 3) and not torch.equal(sd, xl)


def test_out_of_range_values_are_clamped_and_other_channel_counts_give_grey():
    bright = np.asarray(approximate(torch.full((1, 4, 1, 1), 100.0), factors_for(sdxl=False)))
    assert bright.min() >= 0 and bright.max() == 255
    latents = torch.linspace(-1, 1, 16).reshape(1, 16, 1, 1).expand(1, 16, 2, 2)
    grey = np.asarray(approximate(latents, factors_for(sdxl=False)))
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()


def test_a_preview_is_wanted_every_n_steps_but_not_at_the_last():
    preview = LivePreview(every=3, show=lambda *_: None)
    assert [step for step in range(1, 10) if preview.wanted(step, 9)] == [3, 6]
    assert not any(LivePreview(every=0, show=lambda *_: None).wanted(step, 9) for step in range(1, 10))


def test_sigma_space_latents_are_shown_at_unit_scale():
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    from studio.engines.previews import noise_scale

    euler = EulerDiscreteScheduler()
    euler.set_timesteps(10)
    assert noise_scale(euler) == 1.0  # before the first step: no step index yet
    euler._step_index = 0
    sigma = float(euler.sigmas[0])
    assert sigma > 5 and abs(noise_scale(euler) - (sigma**2 + 1) ** 0.5) < 1e-6
    euler._step_index = len(euler.sigmas) - 1  # the end: sigma 0, the image itself
    assert noise_scale(euler) == 1.0
    ddim = DDIMScheduler()
    ddim.set_timesteps(10)
    assert noise_scale(ddim) == 1.0
