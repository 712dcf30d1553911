"""int8 weights for the OpenVINO IR (--openvino-weights, studio.engines.openvino_int8) on the demo model: only the
UNet's and text encoder's MatMul/embedding weights become int8 (never a convolution, never the VAE), the pixels stay
within the bf16 bounds against torch, the setting is a flag and a variable, and NNCF is asked for by name."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

ov = pytest.importorskip("openvino")
pytest.importorskip("nncf")

from studio import engines  # noqa: E402
from studio.config import ConfigError, EngineSettings, OpenVINOWeights, load_settings  # noqa: E402
from studio.engine import ModelLoadError  # noqa: E402
from studio.engines.local import LocalEngine  # noqa: E402
from studio.engines.openvino_int8 import compress_int8  # noqa: E402
from studio.engines.openvino_ir import weight_format  # noqa: E402
from studio.types import GenerationRequest  # noqa: E402

REQUEST = GenerationRequest(prompt="a photo of a cat", width=200, height=136, steps=8, seed=77, sampler="DPM++ 2M")
# The same bounds test_openvino.py sets for bf16 with fp16 weights against torch fp32 (8-bit levels).
BF16_MEAN, BF16_MAX = 3, 64
PASS_THROUGH = {"Convert", "Subtract", "Multiply", "Reshape", "Transpose"}  # NNCF's decompression chain


def _pixels(engine, request=REQUEST) -> np.ndarray:
    return np.asarray(engine.generate(request).images[0].convert("RGB"), dtype=np.int16)


def _consumers_of_int8(xml: str, names: bool = False) -> list[str]:
    """For every u8/i8 constant of the IR, the type (or the name) of the first op past NNCF's decompression chain."""
    model = ov.Core().read_model(xml)
    found = []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Constant" or op.get_element_type().get_type_name() not in ("u8", "i8"):
            continue
        node = op
        while node.get_type_name() in PASS_THROUGH | {"Constant"}:
            (target,) = {t.get_node() for t in node.output(0).get_target_inputs()}
            node = target
        found.append(node.get_friendly_name() if names else node.get_type_name())
    return found


def _float_weight_types(xml: str, min_elements: int = 64) -> set[str]:
    """Element types of the IR's float constants with at least `min_elements` values (weights, not scalars)."""
    model = ov.Core().read_model(xml)
    types = set()
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Constant" and shape_size(op) >= min_elements:
            kind = op.get_element_type().get_type_name()
            types |= {kind} if kind.startswith(("f", "bf")) else set()
    return types


def shape_size(op) -> int:
    return int(np.prod(op.get_output_shape(0))) if len(op.get_output_shape(0)) else 1


def _ir_dir(report, network: str) -> str:
    return next(c.ir_dir for c in report.components if c.name == network)


def _loaded(cache, weights: str = "auto"):
    """A loaded OpenVINO engine on the demo model (bf16), with IR weights `weights`, its IR cache in `cache`."""
    settings = EngineSettings(model="demo", kind="openvino", openvino_weights=weights, openvino_cache=cache)
    engine = engines.build(settings)
    engine.load()
    return engine


@pytest.fixture(scope="module")
def int8_engine(tmp_path_factory):
    return _loaded(tmp_path_factory.mktemp("ir"))


def test_auto_weights_are_int8_for_bf16_and_fp32_for_f32():
    assert weight_format("bf16") == "int8" and weight_format("f32") == "fp32"
    assert weight_format("bf16", "fp16") == "fp16" and weight_format("f32", "int8") == "int8"


def test_only_matmul_and_embedding_weights_of_unet_and_text_encoder_are_int8(int8_engine):
    report = int8_engine.accelerator.report
    assert report.weights == "int8" and "int8 MatMul weights" in report.summary()
    consumers = {c.name: _consumers_of_int8(f"{c.ir_dir}/model.xml") for c in report.components}
    assert consumers["unet"] and set(consumers["unet"]) <= {"MatMul"}
    assert consumers["text_encoder"] and set(consumers["text_encoder"]) <= {"MatMul", "Gather"}
    assert consumers["vae_decoder"] == [] and consumers["vae_encoder"] == []
    for network in ("unet", "text_encoder"):  # the other weights are fp16, as in the fp16 IR (never left f32)
        assert _float_weight_types(f"{_ir_dir(report, network)}/model.xml") == {"f16"}


@pytest.fixture(scope="module")
def torch_pixels() -> np.ndarray:
    """REQUEST's pixels from the torch engine (fp32): what every int8 format is held to."""
    torch_engine = LocalEngine("demo", device="cpu")
    torch_engine.load()
    return _pixels(torch_engine)


def _assert_bf16_close_and_repeatable(engine, reference: np.ndarray) -> None:
    diff = np.abs(_pixels(engine) - reference)
    assert diff.mean() < BF16_MEAN and diff.max() <= BF16_MAX
    assert np.array_equal(_pixels(engine), _pixels(engine))  # same seed, same pixels


def test_int8_pixels_stay_within_the_bf16_bounds_against_torch(int8_engine, torch_pixels):
    assert int8_engine.accelerator.report.precision in ("bf16", "f32")  # f32 on CPUs without native bf16
    _assert_bf16_close_and_repeatable(int8_engine, torch_pixels)


def test_fp16_weights_are_a_separate_cache_entry_without_int8(int8_engine):
    engine = _loaded(int8_engine.accelerator.cache, "fp16")
    report = engine.accelerator.report
    by_name = {c.name: c for c in report.components}
    assert report.weights == "fp16" and not by_name["unet"].cache_hit and by_name["vae_decoder"].cache_hit
    assert _consumers_of_int8(f"{by_name['unet'].ir_dir}/model.xml") == []
    warm = _loaded(int8_engine.accelerator.cache, "fp16")  # from the warm entry: it names the weights of its IR
    assert warm.accelerator.report.warm and warm.accelerator.report.weights == "fp16"


def test_the_setting_is_a_flag_and_a_variable_and_a_bad_value_names_it():
    assert EngineSettings(openvino_weights="INT8").openvino_weights is OpenVINOWeights.INT8
    assert load_settings(["--openvino-weights", "fp16"], environ={}).engine.openvino_weights is OpenVINOWeights.FP16
    loaded = load_settings([], environ={"STUDIO_OPENVINO_WEIGHTS": "fp32"})
    assert loaded.engine.openvino_weights is OpenVINOWeights.FP32
    expected = "openvino_weights: expected one of auto, fp16, fp32, int8, int8-hybrid, int8-full, got 'int4'"
    with pytest.raises(ConfigError, match=expected):
        EngineSettings(openvino_weights="int4")


def test_without_nncf_the_error_says_what_to_install(monkeypatch):
    monkeypatch.delitem(sys.modules, "nncf", raising=False)
    monkeypatch.setitem(sys.modules, "nncf", None)  # import nncf raises ImportError
    with pytest.raises(ModelLoadError, match=r"--openvino-weights int8 needs NNCF.*pip install nncf==3\.4\.0"):
        compress_int8(ov.Model([], []))


def test_nncf_gets_its_no_op_telemetry_and_openvino_telemetry_is_left_as_it_was(int8_engine):
    import nncf.telemetry.wrapper as wrapper

    assert not isinstance(wrapper.telemetry, wrapper.NNCFTelemetry)  # the stub: nothing is sent
    assert sys.modules.get("openvino_telemetry") is not None  # restored after NNCF's import


# --- int8-hybrid: the UNet's convolutions int8 too, calibrated at conversion ---


@pytest.fixture(scope="module")
def hybrid_engine(int8_engine):
    return _loaded(int8_engine.accelerator.cache, "int8-hybrid")


def _op_types(xml: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for op in ov.Core().read_model(xml).get_ordered_ops():
        counts[op.get_type_name()] = counts.get(op.get_type_name(), 0) + 1
    return counts


def _op_names(xml: str, kind: str) -> list[str]:
    return [op.get_friendly_name() for op in ov.Core().read_model(xml).get_ordered_ops() if op.get_type_name() == kind]


def test_hybrid_quantizes_the_unets_convolutions_and_shares_the_other_networks_ir(int8_engine, hybrid_engine):
    report = hybrid_engine.accelerator.report
    assert report.weights == "int8-hybrid" and "int8 UNet convolutions" in report.summary()
    hybrid, plain = ({c.name: c for c in r.components} for r in (report, int8_engine.accelerator.report))
    assert not hybrid["unet"].cache_hit and hybrid["unet"].ir_dir != plain["unet"].ir_dir
    for network in ("text_encoder", "vae_decoder", "vae_encoder"):  # int8 weights / fp16: the int8 engine's entries
        assert hybrid[network].cache_hit and hybrid[network].ir_dir == plain[network].ir_dir
    unet_xml = f"{hybrid['unet'].ir_dir}/model.xml"
    assert _op_types(unet_xml).get("FakeQuantize", 0) > _op_types(unet_xml)["Convolution"]  # inputs and weights
    assert "FakeQuantize" not in _op_types(f"{plain['unet'].ir_dir}/model.xml")
    consumers = set(_consumers_of_int8(unet_xml))
    assert {"MatMul", "Convolution"} <= consumers  # MatMul weights compressed, convolution weights quantized
    int8_ops = set(_consumers_of_int8(unet_xml, names=True))
    for sensitive in ("conv_in", "conv_out", "conv_shortcut"):  # they stay bf16 (SENSITIVE_CONVOLUTIONS)
        assert any(f".{sensitive}/" in name for name in _op_names(unet_xml, "Convolution"))
        assert not any(f".{sensitive}/" in name for name in int8_ops)


def test_hybrid_pixels_stay_within_the_bf16_bounds_and_repeat(hybrid_engine, torch_pixels):
    _assert_bf16_close_and_repeatable(hybrid_engine, torch_pixels)
    img2img = GenerationRequest(prompt="a cat", width=128, height=128, steps=6, seed=5, strength=0.6,
                                image=Image.new("RGB", (128, 128), (200, 40, 90)))
    assert hybrid_engine.generate(img2img).images[0].size == (128, 128)


def test_calibration_inputs_are_guided_steps_across_the_schedule_and_deterministic(int8_engine):
    from transformers import CLIPTextModel, CLIPTokenizer

    from studio.engines.openvino_int8 import CALIBRATION_SAMPLES, unet_calibration
    from studio.models.demo import demo_model_dir

    folder = demo_model_dir()
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder").eval()
    first, again = (unet_calibration(tokenizer, text_encoder, 4) for _ in range(2))
    assert len(first) == CALIBRATION_SAMPLES
    sample, timestep, states = first[0]
    assert sample.shape == (2, 4, 32, 32) and states.shape == (2, 77, text_encoder.config.hidden_size)
    assert not np.array_equal(states[0], states[1])  # negative (empty) and positive prompt
    timesteps = [float(t) for _, t, _ in first]
    assert max(timesteps) >= 990 and min(timesteps) <= 10
    assert all(np.array_equal(a, b) for x, y in zip(first, again, strict=True) for a, b in zip(x, y, strict=True))


@pytest.mark.parametrize("weights", ["int8-hybrid", "int8-full"])
def test_a_calibrated_unet_without_calibration_inputs_is_a_load_error(tmp_path, weights):
    import torch
    from diffusers import UNet2DConditionModel

    from studio.engines.openvino_ir import ir_path, unet_specs
    from studio.models.demo import demo_model_dir

    unet = UNet2DConditionModel.from_pretrained(demo_model_dir() / "unet").eval()
    with torch.no_grad(), pytest.raises(ModelLoadError, match=f"{weights}: the unet needs calibration inputs"):
        ir_path(unet_specs(unet)[0], unet, "f" * 16, tmp_path, weights, ov.get_version())
    assert not list(tmp_path.glob("unet-*/model.xml"))  # nothing half-made is left for the next load


def test_a_new_hybrid_recipe_is_a_new_ir_and_warm_entry_never_the_old_one(monkeypatch, hybrid_engine, tmp_path):
    from studio.engines import openvino_int8
    from studio.engines.openvino_warm import warm_key
    from studio.models import resolve_model

    source = resolve_model("demo", tmp_path)
    version = hybrid_engine.accelerator.report.version
    before = warm_key(source, "int8-hybrid", version)
    assert before != warm_key(source, "int8", version) and warm_key(source, "int8", version) is not None
    monkeypatch.setattr(openvino_int8, "HYBRID_RECIPE", openvino_int8.HYBRID_RECIPE + 1)
    assert warm_key(source, "int8-hybrid", version) != before
    assert warm_key(source, "int8", version) == warm_key(source, "int8", version)  # the others keep theirs
    again = _loaded(hybrid_engine.accelerator.cache, "int8-hybrid")  # the old recipe's entry and IR stay unused
    by_name = {c.name: c for c in again.accelerator.report.components}
    assert not again.accelerator.report.warm and not by_name["unet"].cache_hit and by_name["text_encoder"].cache_hit


# --- int8-full: the UNet's linear layers int8 too ---


@pytest.fixture(scope="module")
def full_engine(int8_engine):
    return _loaded(int8_engine.accelerator.cache, "int8-full")


def _weighted_matmuls(xml: str) -> list[tuple[bool, str, bool]]:
    """For each MatMul of the IR with a constant weight: (a FakeQuantize feeds its activation, the weight's element
    type, the weight has a zero point), looking through NNCF's decompression chain and reshapes."""
    found = []
    for op in ov.Core().read_model(xml).get_ordered_ops():
        if op.get_type_name() != "MatMul":
            continue
        chains = []
        for port in range(2):
            node, seen = op.input_value(port).get_node(), []
            while node.get_type_name() in PASS_THROUGH:
                seen.append(node.get_type_name())
                node = node.input_value(0).get_node()
            chains.append((node, seen))
        weights = [(node, seen) for node, seen in chains if node.get_type_name() == "Constant"]
        if len(weights) != 1:
            continue
        (weight, seen), (activation, _) = weights[0], next(c for c in chains if c[0] is not weights[0][0])
        found.append((_quantized(activation), weight.get_element_type().get_type_name(), "Subtract" in seen))
    return found


def _quantized(node) -> bool:
    """A FakeQuantize, or a Concat of them (the time embedding's sin and cos halves)."""
    if node.get_type_name() == "Concat":
        return all(_quantized(node.input_value(i).get_node()) for i in range(node.get_input_size()))
    return node.get_type_name() == "FakeQuantize"


def test_full_quantizes_the_unets_linear_layers_too_and_shares_the_other_networks_ir(
    int8_engine, hybrid_engine, full_engine
):
    report = full_engine.accelerator.report
    assert report.weights == "int8-full" and "int8 UNet (convolutions and linear layers)" in report.summary()
    full, plain, hybrid = ({c.name: c for c in r.components} for r in (report, int8_engine.accelerator.report,
                                                                          hybrid_engine.accelerator.report))
    assert not full["unet"].cache_hit and full["unet"].ir_dir not in (plain["unet"].ir_dir, hybrid["unet"].ir_dir)
    for network in ("text_encoder", "vae_decoder", "vae_encoder"):  # int8 weights / fp16: the int8 engine's entries
        assert full[network].cache_hit and full[network].ir_dir == plain[network].ir_dir
    full_matmuls = _weighted_matmuls(f"{full['unet'].ir_dir}/model.xml")
    hybrid_matmuls = _weighted_matmuls(f"{hybrid['unet'].ir_dir}/model.xml")
    assert len(full_matmuls) == len(hybrid_matmuls) > 20  # the same linear layers
    # full: int8 activations and symmetric int8 weights (what the CPU's int8 FullyConnected kernels take) ...
    assert all(fq and kind == "i8" and not zero_point for fq, kind, zero_point in full_matmuls)
    # ... hybrid: bf16 activations, asymmetric u8 weights decompressed in the kernel
    assert not any(fq for fq, _, _ in hybrid_matmuls) and all(kind == "u8" for _, kind, _ in hybrid_matmuls)
    int8_ops = _consumers_of_int8(f"{full['unet'].ir_dir}/model.xml", names=True)
    for sensitive in ("conv_in", "conv_out", "conv_shortcut"):  # they stay bf16 here too
        assert not any(f".{sensitive}/" in name for name in int8_ops)


def test_full_pixels_stay_within_the_bf16_bounds_and_repeat(full_engine, torch_pixels):
    _assert_bf16_close_and_repeatable(full_engine, torch_pixels)
    warm = _loaded(full_engine.accelerator.cache, "int8-full")  # the warm entry names its weights and keeps them
    assert warm.accelerator.report.warm and warm.accelerator.report.weights == "int8-full"
    assert np.array_equal(_pixels(warm), _pixels(full_engine))


def test_each_calibrated_format_has_its_own_recipe_version(monkeypatch, tmp_path):
    from studio.engines import openvino_int8
    from studio.engines.openvino_warm import warm_key
    from studio.models import resolve_model

    source, version = resolve_model("demo", tmp_path), ov.get_version()
    keys = {w: warm_key(source, w, version) for w in ("int8", "int8-hybrid", "int8-full")}
    assert len(set(keys.values())) == 3
    monkeypatch.setattr(openvino_int8, "FULL_RECIPE", openvino_int8.FULL_RECIPE + 1)
    assert warm_key(source, "int8-full", version) != keys["int8-full"]
    assert warm_key(source, "int8-hybrid", version) == keys["int8-hybrid"]
