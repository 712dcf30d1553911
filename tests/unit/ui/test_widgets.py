"""The one place form values become a GenerationRequest."""

from __future__ import annotations

import pytest
from PIL import Image

from studio.types import RequestError, Task
from studio.ui.widgets import to_request


def test_form_values_become_a_request():
    request = to_request("a fox", None, "Euler a", 20.0, 7.5, -1.0, 512.0, 384.0, 2.0)
    assert (request.prompt, request.negative_prompt, request.sampler) == ("a fox", "", "Euler a")
    assert (request.steps, request.seed, request.width, request.height, request.count) == (20, -1, 512, 384, 2)
    assert all(type(v) is int for v in (request.steps, request.seed, request.width, request.height, request.count))
    assert request.cfg_scale == 7.5 and request.task is Task.TXT2IMG


def test_task_fields_are_passed_on():
    image, mask = Image.new("RGB", (64, 64)), Image.new("L", (64, 64))
    request = to_request("", "", "Euler", 4, 7, 1, 64, 64, 1, image=image, mask=mask, strength=1.0, mask_blur=4.0)
    assert request.task is Task.INPAINT and request.strength == 1 and request.mask_blur == 4
    assert request.image is image and request.mask is mask


@pytest.mark.parametrize(("position", "value", "field"), [(3, 4.5, "steps"), (6, "64", "width"), (8, True, "count")])
def test_bad_values_reach_validation_unchanged(position, value, field):
    values = ["x", "", "Euler", 4, 7, 1, 64, 64, 1]
    values[position] = value
    with pytest.raises(RequestError, match=field):
        to_request(*values).validate()
