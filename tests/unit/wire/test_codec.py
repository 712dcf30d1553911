"""studio.wire.codec: every dialect decodes to the right request, round trips are exact, bad input names the field.

The codec does no I/O: s3:// and http(s) references go to an injected `fetch` (tests/unit/wire/test_images.py).
"""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from studio.engine import EngineError
from studio.testing.wire import BAD_INPUT_IDS, BAD_INPUTS, gradient, png_b64, result_for
from studio.types import DEFAULT_LIMITS, GenerationRequest, GenerationResult, Limits, RequestError, Task
from studio.wire import codec
from studio.wire.codec import Dialect


def decode(payload, *, limits: Limits = DEFAULT_LIMITS, fetch=None):
    """(request, dialect) of a payload, as the serving side decodes it."""
    invocation = codec.decode_invocation(payload, limits=limits, fetch=fetch)
    return invocation.request, invocation.dialect


def test_request_round_trip_txt2img_keeps_every_field():
    request = GenerationRequest(
        prompt="a cat, 8k",
        negative_prompt="blurry",
        sampler="DPM++ 2M Karras",
        steps=7,
        cfg_scale=5.5,
        seed=1234,
        width=320,
        height=192,
        count=3,
        strength=0.4,
        mask_blur=2,
    )
    decoded, dialect = decode(codec.encode_request(request))
    assert decoded == request.validate()  # validated: "DPM++ 2M Karras" is sampler DPM++ 2M, schedule type Karras
    assert (decoded.sampler, decoded.scheduler) == ("DPM++ 2M", "Karras")
    assert dialect is Dialect.NATIVE


A1111_FIELDS = {
    "scheduler": "Karras",
    "clip_skip": 2,
    "vae": "vae-ft-mse-840000-ema-pruned.safetensors",
    "hires_scale": 2.0,
    "hires_resize_x": 0,
    "hires_resize_y": 0,
    "hires_upscaler": "Latent (bicubic antialiased)",
    "hires_steps": 6,
    "hires_strength": 0.45,
}


def test_request_round_trip_carries_the_a1111_fields():
    request = GenerationRequest(
        prompt="a fox <lora:fubuki:0.7>, (snow:1.2)",
        sampler="DPM++ 2M SDE",
        width=256,
        height=384,
        seed=5,
        **A1111_FIELDS,
    )
    payload = codec.encode_request(request)
    assert {name: payload[name] for name in A1111_FIELDS if name in payload} == {
        name: value for name, value in A1111_FIELDS.items() if not name.startswith("hires_resize")
    }
    decoded, dialect = decode(payload)
    assert decoded == request.validate() and dialect is Dialect.NATIVE
    assert decoded.prompt == "a fox <lora:fubuki:0.7>, (snow:1.2)"  # LoRA tags travel in the prompt
    resized = request.replace(hires_scale=1.0, hires_resize_x=512, hires_resize_y=640)
    assert decode(codec.encode_request(resized))[0].hires_size() == (512, 640)


def test_encode_request_leaves_default_a1111_fields_out():
    """A plain request is what an older serving app (before these fields) still accepts."""
    payload = codec.encode_request(GenerationRequest(prompt="x", seed=1))
    assert not set(A1111_FIELDS) & set(payload)
    assert set(payload) == {
        "prompt",
        "negative_prompt",
        "sampler",
        "steps",
        "cfg_scale",
        "seed",
        "width",
        "height",
        "count",
        "strength",
        "mask_blur",
    }


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"clip_skip": 13}, "clip_skip", "between 1 and 12"),
        ({"clip_skip": "2"}, "clip_skip", "whole number"),
        ({"scheduler": "Sometimes"}, "scheduler", "valid schedule types"),
        ({"vae": ""}, "vae", "VAE name"),
        ({"hires_scale": 9}, "hires_scale", "between 1 and 8"),
        ({"hires_strength": 0}, "hires_strength", "greater than 0"),
        ({"hires_resize_x": 100}, "hires_resize_x", "multiple of 8"),
        ({"hires_steps": -1}, "hires_steps", "between 0 and"),
        ({"hires_scale": 2, "input_image": png_b64(gradient())}, "hires_scale", "text to image only"),
        ({"hires_scale": 8, "width": 512, "height": 512}, "hires_scale", "the hires fix size"),
    ],
)
def test_bad_a1111_fields_name_the_field(changes, field, words):
    with pytest.raises(RequestError, match=words) as caught:
        decode({"prompt": "x", **changes})
    assert caught.value.field == field


def test_unknown_field_lists_the_a1111_fields_too():
    with pytest.raises(RequestError, match="unknown field") as caught:
        decode({"prompt": "x", "hr_scale": 2})
    assert caught.value.field == "hr_scale"
    for name in A1111_FIELDS:
        assert name in str(caught.value)


def test_request_round_trip_inpaint_keeps_pixels():
    image, mask = gradient(), gradient(mode="L")
    request = GenerationRequest(prompt="x", image=image, mask=mask, width=64, height=48, seed=3)
    payload = codec.encode_request(request)
    assert isinstance(payload["input_image"], str) and isinstance(payload["mask_image"], str)
    decoded, _ = decode(payload)
    assert decoded == request and decoded.task is Task.INPAINT
    assert decoded.image.mode == "RGB" and decoded.mask.mode == "L"
    assert decoded.image.tobytes() == image.tobytes()
    assert decoded.mask.tobytes() == mask.tobytes()


def test_result_round_trip_keeps_pixels_seeds_infotexts():
    request = GenerationRequest(prompt="a dog", width=64, height=48, count=2, seed=10, steps=3)
    result = result_for(request)
    payload = codec.encode_result(result, Dialect.NATIVE)
    assert set(payload) >= {"images", "seeds", "infotexts", "warnings", "timings", "model", "backend"}
    back = codec.decode_result(payload, request, backend="http")
    assert back.seeds == [10, 11] and back.infotexts == result.infotexts
    assert back.warnings == ["prompt truncated"] and back.model == "demo" and back.backend == "http"
    assert back.timings["generate"] == 0.5 and "encode" in back.timings
    assert [i.tobytes() for i in back.images] == [i.tobytes() for i in result.images]
    # the PNG carries the A1111 infotext chunk
    png = Image.open(io.BytesIO(base64.b64decode(payload["images"][0])))
    assert png.info["parameters"] == result.infotexts[0]


def test_decode_result_resolves_random_seed_from_response():
    request = GenerationRequest(prompt="x", width=64, height=48, seed=-1)
    resolved = request.replace(seed=777)
    payload = codec.encode_result(result_for(resolved), Dialect.NATIVE)
    back = codec.decode_result(payload, request)
    assert back.request.seed == 777 and back.seeds == [777]


@pytest.mark.parametrize(
    "payload",
    [{"error": "boom"}, {"images": []}, {"images": ["!!!"]}, {"nothing": 1}, [], {"images": ["aGVsbG8="]}],
)
def test_decode_result_rejects_malformed_responses(payload):
    with pytest.raises(EngineError):
        codec.decode_result(payload, GenerationRequest(prompt="x", seed=1))


def test_quick_kit_request():
    image = gradient(64, 64)
    payload = {
        "prompt": "astronaut",
        "negative_prompt": "",
        "steps": 20,
        "sampler": "euler_a",
        "seed": 1024,
        "height": 64,
        "width": 64,
        "count": 2,
        "input_image": png_b64(image),
    }
    request, dialect = decode(payload)
    assert dialect is Dialect.QUICK_KIT
    assert request.sampler == "Euler a" and request.count == 2 and request.seed == 1024 and request.steps == 20
    assert request.task is Task.IMG2IMG and request.image.tobytes() == image.tobytes()


@pytest.mark.parametrize(
    ("name", "expected"),
    [("eular", "Euler"), ("heun", "Heun"), ("lms", "LMS"), ("dpm2", "DPM2"), ("dpm2_a", "DPM2 a"), ("ddim", "DDIM")],
)
def test_quick_kit_sampler_names(name, expected):
    request, _ = decode({"prompt": "x", "sampler": name})
    assert request.sampler == expected


def test_hf_dlc_request_with_prompt_list():
    payload = {
        "prompt": ["a castle", "a castle"],
        "height": 64,
        "width": 128,
        "num_images_per_prompt": 2,
        "num_inference_steps": 9,
        "guidance_scale": 6.5,
        "negative_prompt": "ugly",
    }
    request, dialect = decode(payload)
    assert dialect is Dialect.HF_DLC
    assert (request.prompt, request.count, request.steps, request.cfg_scale) == ("a castle", 4, 9, 6.5)
    assert (request.width, request.height, request.negative_prompt) == (128, 64, "ugly")


def test_hf_inputs_parameters_form():
    request, dialect = decode({"inputs": "a fox", "parameters": {"num_inference_steps": 4, "seed": 5}})
    assert dialect is Dialect.HF_DLC and request.prompt == "a fox" and request.steps == 4 and request.seed == 5


def test_byoc_text_to_image_and_inpaint():
    request, dialect = decode(
        {"prompt": "p", "guidance_scale": 8, "num_inference_steps": 12, "height": 64, "width": 64, "results": 3}
    )
    assert dialect is Dialect.BYOC and request.count == 3 and request.steps == 12 and request.cfg_scale == 8.0
    image, mask = gradient(64, 64), gradient(64, 64, "L")
    request, dialect = decode(
        {"prompt": "p", "img": png_b64(image), "mask": png_b64(mask), "strength": 0.6, "height": 64, "width": 64}
    )
    assert dialect is Dialect.BYOC and request.task is Task.INPAINT and request.strength == 0.6
    assert request.mask.tobytes() == mask.tobytes()


def test_native_request_is_native_and_explicit_dialect_wins():
    assert decode({"prompt": "x", "cfg_scale": 4})[1] is Dialect.NATIVE
    assert decode({"prompt": "x"})[1] is Dialect.NATIVE
    assert decode({"prompt": "x", "steps": 4, "dialect": "hf_dlc"})[1] is Dialect.HF_DLC


def test_image_forms_data_url_and_urlsafe():
    image = gradient(32, 32)
    raw = base64.b64decode(png_b64(image))
    data_url = "data:image/png;base64," + base64.b64encode(raw).decode()
    urlsafe = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    for value in (data_url, urlsafe):
        request, _ = decode({"prompt": "x", "input_image": value})
        assert request.image.tobytes() == image.tobytes()


def test_references_go_to_fetch_with_the_field_and_are_refused_without_one():
    raw = base64.b64decode(png_b64(gradient(32, 32)))
    asked = []

    def fetch(field, uri):
        asked.append((field, uri))
        return raw

    request, _ = decode({"prompt": "x", "img": "s3://bucket/in/cat.png", "mask": "https://h/m.png"}, fetch=fetch)
    assert asked == [("img", "s3://bucket/in/cat.png"), ("mask", "https://h/m.png")]
    assert request.image.size == (32, 32) and request.mask.mode == "L"
    with pytest.raises(RequestError, match="^input_image: http"):
        decode({"prompt": "x", "input_image": "http://127.0.0.1:9/cat.png"})
    with pytest.raises(RequestError, match="^img: .*no S3 client"):
        decode({"prompt": "x", "img": "s3://bucket/in/cat.png"})


def test_size_defaults_to_input_image_rounded_to_multiple_of_8():
    request, _ = decode({"prompt": "x", "input_image": png_b64(gradient(100, 61))})
    assert (request.width, request.height) == (96, 56)
    with pytest.raises(RequestError, match="^width: .*taken from the input image"):
        decode({"prompt": "x", "input_image": png_b64(gradient(64, 64))}, limits=Limits(max_width=32))


def test_rgba_mask_uses_alpha_strokes():
    mask = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    mask.paste((0, 0, 0, 255), (0, 0, 8, 16))  # black but opaque strokes on the left half
    request, _ = decode({"prompt": "x", "input_image": png_b64(gradient(16, 16)), "mask_image": png_b64(mask)})
    assert request.mask.getpixel((2, 2)) == 255 and request.mask.getpixel((12, 2)) == 0


def test_s3_output_is_kept_with_the_spelling_used():
    invocation = codec.decode_invocation({"prompt": "x", "output_s3uri": "s3://bkt/out/", "steps": 2}, limits=Limits())
    assert (invocation.s3_output, invocation.s3_output_field) == ("s3://bkt/out/", "output_s3uri")
    assert invocation.dialect is Dialect.QUICK_KIT
    assert codec.decode_invocation({"prompt": "x"}, limits=Limits()).s3_output is None


def test_response_shapes_by_dialect():
    request = GenerationRequest(prompt="x", width=64, height=48, count=2, seed=1)
    result = result_for(request)
    assert len(codec.encode_result(result, Dialect.HF_DLC)["generated_images"]) == 2
    assert len(codec.encode_result(result, Dialect.QUICK_KIT)["images"]) == 2  # no S3: base64
    uris = ["s3://out-bucket/renders/a-0-1.png", "s3://out-bucket/renders/a-1-2.png"]
    quick = codec.encode_result(result, Dialect.QUICK_KIT, uris=uris)
    assert quick["result"] == uris and "images" not in quick
    assert codec.encode_result(result, Dialect.BYOC, uris=uris)["s3_loc"] == uris
    native = codec.encode_result(result, Dialect.NATIVE, uris=uris)
    assert len(native["images"]) == 2 and native["s3_uris"] == uris
    # PNGs encoded once for an upload are reused as they are
    pngs = codec.encode_pngs(result)
    assert Image.open(io.BytesIO(pngs[0])).info["parameters"] == result.infotexts[0]
    hf = codec.encode_result(result, Dialect.HF_DLC, uris=uris, pngs=pngs)
    assert [base64.b64decode(text) for text in hf["generated_images"]] == pngs


def test_an_s3_only_response_is_read_back_through_fetch():
    request = GenerationRequest(prompt="x", width=64, height=48, count=2, seed=1)
    result = result_for(request)
    pngs = codec.encode_pngs(result)
    stored = {f"s3://out/{i}.png": data for i, data in enumerate(pngs)}
    quick = codec.encode_result(result, Dialect.QUICK_KIT, uris=list(stored))
    back = codec.decode_result(quick, request, backend="sagemaker", fetch=lambda _field, uri: stored[uri])
    assert [i.tobytes() for i in back.images] == [i.tobytes() for i in result.images]
    with pytest.raises(EngineError, match="only S3 URIs"):
        codec.decode_result(quick, request)


def test_encode_result_refuses_empty_result():
    request = GenerationRequest(prompt="x", seed=1)
    with pytest.raises(EngineError, match="no images"):
        codec.encode_result(GenerationResult([], [], [], request), Dialect.NATIVE)


@pytest.mark.parametrize(("payload", "field", "words"), BAD_INPUTS, ids=BAD_INPUT_IDS)
def test_bad_input_names_the_field(payload, field, words):
    with pytest.raises(RequestError) as caught:
        decode(payload)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    assert words in str(caught.value)


# ---- dialect detection rules (studio.wire.dialects) and prompt lists -------------------------------------------
@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        # BYOC's text-to-image payload without `results`: only keys every dialect sends -> native, not HF-DLC
        ({"prompt": "p", "guidance_scale": 7, "num_inference_steps": 2, "height": 64, "width": 64}, Dialect.NATIVE),
        ({"prompt": "p", "num_inference_steps": 2, "results": 1}, Dialect.BYOC),
        ({"prompt": "p", "img": png_b64(gradient(64, 64)), "height": 64, "width": 64}, Dialect.BYOC),
        ({"prompt": ["a", "b"], "num_images_per_prompt": 1}, Dialect.HF_DLC),
        ({"prompt": ["a", "b"], "height": 64, "width": 64}, Dialect.NATIVE),  # a list alone decides nothing
        ({"inputs": "a"}, Dialect.HF_DLC),
        ({"prompt": "p", "output_s3uri": "s3://bucket/out/"}, Dialect.QUICK_KIT),
        ({"prompt": "p", "sampler": "dpm2_a", "steps": 2}, Dialect.QUICK_KIT),
        ({"prompt": "p", "sampler": "Euler a", "steps": 2, "count": 2}, Dialect.NATIVE),
        ({"prompt": "p", "results": 1, "num_images_per_prompt": 1}, Dialect.NATIVE),  # two dialects' marks
        ({"prompt": "p", "results": 1, "dialect": "hf_dlc"}, Dialect.HF_DLC),  # explicit wins
    ],
)
def test_dialect_detection_rules(payload, expected):
    assert codec.detect_dialect(payload) is expected
    decode(payload)  # every one of them decodes


def test_every_answer_names_its_dialect():
    result = result_for(GenerationRequest(prompt="x", width=64, height=48, count=1, seed=1))
    for dialect in Dialect:
        assert codec.encode_result(result, dialect)["dialect"] == dialect.value


def test_hf_dlc_sample_prompt_list_gives_one_request_per_prompt_in_order():
    payload = {
        "prompt": ["A cute panda is sitting on the sofa", "a photograph of an astronaut riding a horse"],
        "height": 64,
        "width": 64,
        "num_images_per_prompt": 2,
        "negative_prompt": ["blurry", "ugly"],
        "seed": 10,
    }
    invocation = codec.decode_invocation(payload)
    assert invocation.dialect is Dialect.HF_DLC and invocation.request.count == 4 and invocation.per_prompt == 2
    requests = invocation.requests()
    assert [(r.prompt, r.negative_prompt, r.count, r.seed) for r in requests] == [
        ("A cute panda is sitting on the sofa", "blurry", 2, 10),
        ("a photograph of an astronaut riding a horse", "ugly", 2, 12),
    ]
    native = codec.decode_invocation({"prompt": ["a", "b", "c"], "count": 1, "negative_prompt": "n", "seed": 1})
    assert native.dialect is Dialect.NATIVE and [r.negative_prompt for r in native.requests()] == ["n"] * 3
    assert [r.seed for r in native.requests()] == [1, 2, 3]


def test_prompt_list_count_limit_names_both_numbers_and_random_seed_is_resolved_once():
    with pytest.raises(RequestError, match=r"^num_images_per_prompt: 3 prompts x 3 images per prompt = 9 images"):
        codec.decode_invocation({"prompt": ["a", "b", "c"], "num_images_per_prompt": 3}, limits=Limits(max_count=8))
    assert codec.decode_invocation({"prompt": ["a", "b"], "count": 4}, limits=Limits(max_count=8)).request.count == 8
    random_seed = codec.decode_invocation({"prompt": ["a", "b"]})
    with pytest.raises(RequestError, match="^seed: "):
        random_seed.requests()
    resolved = random_seed.with_resolved_seed().requests()
    assert resolved[1].seed == resolved[0].seed + 1
    with pytest.raises(RequestError, match="^prompt: "):  # every prompt of the list is checked, not only the first
        codec.decode_invocation({"prompt": ["ok", "x" * 30]}, limits=Limits(max_prompt_chars=10))
