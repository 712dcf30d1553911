"""Inpainting the A1111 API asks for, through LocalEngine on the demo model: "Only masked" (crop, generate at
width x height, paste back) and the four "Masked content" modes, on the base model and on a 9-channel one."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from studio.engines.inpaint import fill_masked
from studio.engines.local import LocalEngine
from studio.models import demo_model_dir
from studio.types import MASKED_CONTENT, GenerationRequest, RequestError

SIZE = (128, 96)
BOX = (72, 24, 103, 55)  # the masked square, away from the edges


def picture() -> Image.Image:
    image = Image.new("RGB", SIZE, (200, 40, 30))
    ImageDraw.Draw(image).rectangle((64, 0, SIZE[0], SIZE[1]), fill=(30, 60, 210))
    return image


def square_mask(box=BOX) -> Image.Image:
    mask = Image.new("L", SIZE, 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return mask


BASE = GenerationRequest(
    prompt="a cat", width=64, height=64, steps=4, seed=9, sampler="Euler a", image=picture(), mask=square_mask(),
    mask_blur=0, strength=0.9,
)  # fmt: skip


@pytest.fixture(scope="module")
def engine() -> LocalEngine:
    eng = LocalEngine("demo", device="cpu")
    eng.load()
    return eng


def pixels(engine: LocalEngine, **changes: object) -> np.ndarray:
    return np.asarray(engine.generate(BASE.replace(**changes)).images[0]).astype(int)


def inside(array: np.ndarray, box=BOX) -> np.ndarray:
    x1, y1, x2, y2 = box
    return array[y1 : y2 + 1, x1 : x2 + 1]


def test_only_masked_keeps_the_input_size_and_everything_outside_the_mask(engine):
    result = engine.generate(BASE.replace(inpaint_only_masked=True, inpaint_padding=8))
    assert result.images[0].size == SIZE and result.warnings == []
    out, original = np.asarray(result.images[0]).astype(int), np.asarray(picture()).astype(int)
    outside = np.asarray(square_mask()) == 0
    assert (out[outside] == original[outside]).all()
    assert (inside(out) != inside(original)).any()
    whole = pixels(engine)  # whole picture: resized to 64x64
    assert whole.shape[:2] == (64, 64)


def test_only_masked_padding_and_edges(engine):
    at_edge = square_mask((0, 0, 20, 95))
    for padding in (0, 32, 2048):
        result = engine.generate(BASE.replace(mask=at_edge, inpaint_only_masked=True, inpaint_padding=padding))
        assert result.images[0].size == SIZE
    narrow = engine.generate(BASE.replace(inpaint_only_masked=True, inpaint_padding=0)).images[0]
    wide = engine.generate(BASE.replace(inpaint_only_masked=True, inpaint_padding=48)).images[0]
    assert narrow.tobytes() != wide.tobytes()  # a different crop is a different generation


def test_only_masked_mask_of_another_size_is_resized_to_the_image_with_a_warning(engine):
    result = engine.generate(BASE.replace(mask=square_mask().resize((64, 48)), inpaint_only_masked=True))
    assert result.images[0].size == SIZE
    assert result.warnings == ["mask: resized from 64x48 to the image's 128x96"]


def test_masked_content_modes_differ_inside_the_mask_only(engine):
    results = {mode: pixels(engine, masked_content=mode) for mode in MASKED_CONTENT}
    original = np.asarray(picture().resize((64, 64), Image.Resampling.LANCZOS)).astype(int)
    box = (36, 16, 51, 36)
    for mode, out in results.items():
        mask = np.asarray(square_mask().resize((64, 64), Image.Resampling.LANCZOS)) == 0
        assert (out[mask] == original[mask]).all(), mode
    insides = {mode: inside(out, box).tobytes() for mode, out in results.items()}
    assert len(set(insides.values())) == len(MASKED_CONTENT), "each mode starts the masked area differently"
    assert pixels(engine, masked_content="latent noise").tobytes() == results["latent noise"].tobytes()  # seeded


def test_latent_modes_on_a_dedicated_inpainting_model():
    eng = LocalEngine("demo", device="cpu", inpaint_model=str(demo_model_dir(inpaint=True)))
    eng.load()
    made = {mode: eng.generate(BASE.replace(masked_content=mode)).images[0].tobytes() for mode in MASKED_CONTENT}
    assert len(set(made.values())) == len(MASKED_CONTENT)
    only = eng.generate(BASE.replace(masked_content="latent nothing", inpaint_only_masked=True))
    assert only.images[0].size == SIZE


def test_fill_spreads_the_surrounding_colours_into_the_mask():
    image = Image.new("RGB", (64, 32), (250, 0, 0))
    ImageDraw.Draw(image).rectangle((32, 0, 63, 31), fill=(0, 0, 250))
    ImageDraw.Draw(image).rectangle((24, 8, 39, 23), fill=(0, 255, 0))  # to be replaced
    mask = Image.new("L", (64, 32), 0)
    ImageDraw.Draw(mask).rectangle((24, 8, 39, 23), fill=255)
    filled = np.asarray(fill_masked(image, mask)).astype(int)
    assert filled[16, 25, 0] > filled[16, 25, 2] and filled[16, 38, 2] > filled[16, 38, 0]  # red left, blue right
    assert filled[8:24, 24:40, 1].max() < 60  # the green is gone
    keep = np.asarray(mask) == 0
    assert (filled[keep] == np.asarray(image).astype(int)[keep]).all()
    everything = Image.new("L", (64, 32), 255)
    assert fill_masked(image, everything).tobytes() == image.tobytes()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"inpaint_only_masked": True, "mask": None}, "inpaint_only_masked"),
        ({"masked_content": "fill", "mask": None}, "masked_content"),
        ({"masked_content": "noise"}, "masked_content"),
        ({"inpaint_only_masked": "yes"}, "inpaint_only_masked"),
        ({"inpaint_padding": -1}, "inpaint_padding"),
        ({"inpaint_padding": 1.5}, "inpaint_padding"),
    ],
)
def test_bad_inpaint_options_are_refused_naming_the_field(changes, field):
    with pytest.raises(RequestError) as caught:
        BASE.replace(**changes).validate()
    assert caught.value.field == field
