"""int8 weights for the OpenVINO IR (--openvino-weights, studio.engines.openvino_int8) on the demo model: only the
UNet's and text encoder's MatMul/embedding weights become int8 (never a convolution, never the VAE), the pixels stay
within the bf16 bounds against torch, the setting is a flag and a variable, and NNCF is asked for by name."""

from __future__ import annotations

import sys

import numpy as np
import pytest

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


def _consumers_of_int8(xml: str) -> list[str]:
    """For every u8/i8 constant of the IR, the type of the first op past NNCF's decompression chain."""
    model = ov.Core().read_model(xml)
    found = []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Constant" or op.get_element_type().get_type_name() not in ("u8", "i8"):
            continue
        node = op
        while node.get_type_name() in PASS_THROUGH | {"Constant"}:
            (target,) = {t.get_node() for t in node.output(0).get_target_inputs()}
            node = target
        found.append(node.get_type_name())
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


@pytest.fixture(scope="module")
def int8_engine(tmp_path_factory):
    engine = engines.build(
        EngineSettings(model="demo", kind="openvino", precision="bf16", openvino_cache=tmp_path_factory.mktemp("ir"))
    )
    engine.load()
    return engine


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


def test_int8_pixels_stay_within_the_bf16_bounds_against_torch(int8_engine):
    torch_engine = LocalEngine("demo", device="cpu")
    torch_engine.load()
    reference = _pixels(torch_engine)
    diff = np.abs(_pixels(int8_engine) - reference)
    assert int8_engine.accelerator.report.precision in ("bf16", "f32")  # f32 on CPUs without native bf16
    assert diff.mean() < BF16_MEAN and diff.max() <= BF16_MAX
    assert np.array_equal(_pixels(int8_engine), _pixels(int8_engine))  # same seed, same pixels


def test_fp16_weights_are_a_separate_cache_entry_without_int8(int8_engine):
    settings = EngineSettings(
        model="demo", kind="openvino", openvino_weights="fp16", openvino_cache=int8_engine.accelerator.cache
    )
    engine = engines.build(settings)
    engine.load()
    report = engine.accelerator.report
    by_name = {c.name: c for c in report.components}
    assert report.weights == "fp16" and not by_name["unet"].cache_hit and by_name["vae_decoder"].cache_hit
    assert _consumers_of_int8(f"{by_name['unet'].ir_dir}/model.xml") == []
    warm = engines.build(settings)  # from the warm entry: its report names the weights of the IR it loaded
    warm.load()
    assert warm.accelerator.report.warm and warm.accelerator.report.weights == "fp16"


def test_the_setting_is_a_flag_and_a_variable_and_a_bad_value_names_it():
    assert EngineSettings(openvino_weights="INT8").openvino_weights is OpenVINOWeights.INT8
    assert load_settings(["--openvino-weights", "fp16"], environ={}).engine.openvino_weights is OpenVINOWeights.FP16
    loaded = load_settings([], environ={"STUDIO_OPENVINO_WEIGHTS": "fp32"})
    assert loaded.engine.openvino_weights is OpenVINOWeights.FP32
    with pytest.raises(ConfigError, match="openvino_weights: expected one of auto, fp16, fp32, int8, got 'int4'"):
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
