"""Static-shape variants of the OpenVINO UNet (studio.engines.openvino_static) on the demo model's IR: a variant is
compiled in the background for the shape just seen, used only for exactly that shape, gives the dynamic model's
result, is bounded (LRU), and a failed compile leaves the dynamic model serving."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

ov = pytest.importorskip("openvino")

from studio import engines  # noqa: E402
from studio.config import ConfigError, EngineSettings, load_settings  # noqa: E402
from studio.engines.openvino_modules import CompiledNetwork, install_unet, networks, set_static_shapes  # noqa: E402
from studio.engines.openvino_static import StaticSource, StaticVariants  # noqa: E402
from studio.types import GenerationRequest, Task  # noqa: E402

CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
# Same IR, same f32 kernels family; static and dynamic graphs may pick other kernels: float rounding only.
F32_TOLERANCE = 1e-3
WAIT_S = 120  # a bound for a background compile of the demo UNet (seconds, not a timing assertion)


@pytest.fixture(scope="module")
def ov_engine(tmp_path_factory):
    engine = engines.build(
        EngineSettings(model="demo", kind="openvino", precision="f32", openvino_cache=tmp_path_factory.mktemp("ir"))
    )
    engine.load()
    return engine


@pytest.fixture(scope="module")
def unet_xml(ov_engine) -> Path:
    (component,) = [c for c in ov_engine.accelerator.report.components if c.name == "unet"]
    return Path(component.ir_dir) / "model.xml"


def network(xml: Path, keep: int) -> CompiledNetwork:
    """A UNet network compiled the way openvino.py compiles it, able to compile static variants of itself."""
    core = ov.Core()
    model = core.read_model(str(xml))
    source = StaticSource(model, core, "CPU", CONFIG)
    return CompiledNetwork("unet", core.compile_model(model, "CPU", CONFIG), source=source, static_shapes=keep)


def unet_inputs(ov_engine, batch: int, height: int, width: int, seed: int) -> tuple[np.ndarray, ...]:
    unet = ov_engine.pipelines[Task.TXT2IMG].unet
    rng = np.random.default_rng(seed)
    sample = rng.standard_normal((batch, unet.config.in_channels, height, width), dtype=np.float32)
    hidden = rng.standard_normal((batch, 77, unet.config.cross_attention_dim), dtype=np.float32)
    return sample, np.asarray(500.0, dtype=np.float32), hidden


def close(out: np.ndarray, reference: np.ndarray) -> bool:
    return out.shape == reference.shape and bool(
        np.abs(out - reference).max() <= F32_TOLERANCE * max(1.0, float(np.abs(reference).max()))
    )


def test_alternating_sizes_each_get_their_own_size_and_the_dynamic_result(ov_engine, unet_xml):
    dynamic = network(unet_xml, keep=0)
    static = network(unet_xml, keep=2)
    a = unet_inputs(ov_engine, 2, 17, 25, seed=1)
    b = unet_inputs(ov_engine, 1, 24, 16, seed=2)
    expected = {id(a): dynamic(*a)[0], id(b): dynamic(*b)[0]}
    assert dynamic.static is None and dynamic.dynamic_calls == 2
    for inputs in (a, b, a, b, a):
        (out,) = static(*inputs)
        assert out.shape == inputs[0].shape
        assert close(out, expected[id(inputs)])
    # The dynamic model never ran: each new shape's variant was compiled on its first call.
    assert static.static_calls == 5 and static.dynamic_calls == 0
    assert sorted(static.static.shapes) == sorted(tuple(x.shape for x in i) for i in (a, b))
    assert static.static.status()["compiled"] == 2


def test_once_the_dynamic_model_ran_new_shapes_run_on_it_while_their_variant_compiles(ov_engine, unet_xml):
    net = network(unet_xml, keep=2)
    reference = network(unet_xml, keep=0)
    a = unet_inputs(ov_engine, 2, 9, 13, seed=8)
    b = unet_inputs(ov_engine, 2, 13, 9, seed=9)
    net.static.set_keep(0)  # off for the first call: the dynamic model runs (and packs its weights)
    net(*a)
    net.static.set_keep(2)
    (first_b,) = net(*b)  # dynamic again; b's variant compiles in the background
    assert net.dynamic_calls == 2 and net.static_calls == 0
    assert net.static.wait(WAIT_S)
    (second_b,) = net(*b)
    assert net.static_calls == 1 and net.static.shapes == [tuple(x.shape for x in b)]
    expected = reference(*b)[0]
    assert close(first_b, expected) and close(second_b, expected)


def test_variants_are_bounded_least_recently_used_first(ov_engine, unet_xml):
    net = network(unet_xml, keep=1)
    a = unet_inputs(ov_engine, 2, 8, 8, seed=3)
    b = unet_inputs(ov_engine, 2, 8, 16, seed=4)
    (from_a,) = net(*a)
    net(*b)
    assert net.static.shapes == [tuple(x.shape for x in b)]  # a's variant was evicted
    (again_a,) = net(*a)  # compiled again, same values
    assert net.static.status()["evicted"] == 2 and net.static.status()["compiled"] == 3
    assert close(again_a, from_a)
    net.set_static_shapes(0)
    assert net.static.shapes == []
    net(*a)
    assert net.dynamic_calls == 1


def test_off_means_no_static_variant_and_no_thread(ov_engine, unet_xml):
    net = network(unet_xml, keep=0)
    before = threading.active_count()
    inputs = unet_inputs(ov_engine, 1, 8, 8, seed=5)
    net(*inputs)
    net(*inputs)
    assert net.static is None and net.static_calls == 0 and threading.active_count() == before
    with pytest.raises(ValueError, match="0 \\(off\\) or more"):
        net.set_static_shapes(-1)


def test_a_failed_compile_leaves_the_dynamic_model_serving_and_is_not_retried(ov_engine, unet_xml):
    net = network(unet_xml, keep=1)
    net.static._compile = lambda shapes: (_ for _ in ()).throw(RuntimeError("out of memory"))
    inputs = unet_inputs(ov_engine, 1, 8, 8, seed=10)
    (out,) = net(*inputs)
    net(*inputs)
    assert out.shape == inputs[0].shape and net.dynamic_calls == 2 and net.static_calls == 0


def test_a_failed_background_compile_is_not_retried():
    attempts = []

    def failing(shapes):
        attempts.append(shapes)
        raise RuntimeError("no memory for you")

    variants = StaticVariants("unet", failing, keep=2)
    shapes = ((1, 4, 8, 8), (), (1, 77, 32))
    variants.want(shapes)
    assert variants.wait(WAIT_S)
    variants.want(shapes)
    assert variants.wait(WAIT_S)
    assert variants.ensure(shapes) is None
    assert attempts == [shapes] and variants.get(shapes) is None
    assert "no memory for you" in next(iter(variants.status()["failed"].values()))


def test_concurrent_calls_of_two_sizes_while_compiling_get_their_own_results(ov_engine, unet_xml):
    net = network(unet_xml, keep=2)
    reference_net = network(unet_xml, keep=0)
    cases = [unet_inputs(ov_engine, 2, 9, 11, seed=6), unet_inputs(ov_engine, 2, 11, 9, seed=7)]
    expected = [reference_net(*inputs)[0] for inputs in cases]
    errors: list[str] = []

    def run(index: int) -> None:
        for _ in range(3):
            (out,) = net(*cases[index])
            if not close(out, expected[index]):
                errors.append(f"case {index}: wrong result")

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1, 0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert net.static.wait(WAIT_S)
    assert errors == [] and net.calls == 12 and net.static_calls > 0


def test_the_engine_renders_each_size_from_its_static_variant_like_the_dynamic_ir(ov_engine, unet_xml):
    unet = ov_engine.pipelines[Task.TXT2IMG].unet
    dynamic = networks(unet)["unet"]
    small = GenerationRequest(prompt="a cat", width=128, height=96, steps=3, seed=5, sampler="Euler")
    tall = small.replace(width=96, height=136)
    expected = {r.width: np.asarray(ov_engine.generate(r).images[0], dtype=np.int16) for r in (small, tall)}
    static = network(unet_xml, keep=2)
    install_unet(unet, static)
    try:
        for request in (small, tall, small, tall):
            image = ov_engine.generate(request).images[0]
            assert image.size == (request.width, request.height)
            assert np.abs(np.asarray(image, dtype=np.int16) - expected[request.width]).max() <= 1
            static.static.wait(WAIT_S)
        assert static.static_calls > 0 and len(static.static.shapes) == 2
    finally:
        install_unet(unet, dynamic)


def test_set_static_shapes_reaches_the_unet_networks_with_a_source(ov_engine, unet_xml):
    unet = ov_engine.pipelines[Task.TXT2IMG].unet
    dynamic = networks(unet)["unet"]
    static = network(unet_xml, keep=1)
    install_unet(unet, static)
    try:
        # the UNet and the VAE's decoder and encoder, shared by every task's pipeline
        assert set_static_shapes(ov_engine.pipelines.values(), 3) == 3
        assert static.static.keep == 3
        assert all(n.static.keep == 3 for n in networks(ov_engine.pipelines[Task.TXT2IMG].vae).values())
    finally:
        install_unet(unet, dynamic)


def test_the_setting_has_a_flag_and_a_variable_and_refuses_negative_counts():
    assert load_settings(["--openvino-static-shapes", "2"], environ={}).engine.openvino_static_shapes == 2
    assert load_settings([], environ={"STUDIO_OPENVINO_STATIC_SHAPES": "0"}).engine.openvino_static_shapes == 0
    with pytest.raises(ConfigError, match="--openvino-static-shapes"):
        EngineSettings(openvino_static_shapes=-1).validate()


@pytest.mark.parametrize("keep", [0, 1])
def test_the_engine_built_from_settings_uses_the_static_shapes_setting(ov_engine, keep):
    """studio.engines.build passes --openvino-static-shapes to the accelerator: by default (1) every image's UNet
    steps run on the static variant of its shape; 0 keeps the dynamic IR only. Either way the image has its size."""
    from studio.engines.openvino_modules import networks
    from studio.types import GenerationRequest

    settings = EngineSettings(
        model="demo",
        kind="openvino",
        precision="f32",
        openvino_cache=ov_engine.accelerator.cache,  # warm: the module's engine converted the demo there
        openvino_static_shapes=keep,
    )
    engine = engines.build(settings)
    engine.load()
    unet = networks(engine.pipelines[Task.TXT2IMG].unet)["unet"]
    # with variants on, the dynamic model is compiled only if a call needs it (none here): no compile, no graph
    assert (unet.compiled is None) is (keep > 0)
    for width in (64, 72):
        request = GenerationRequest(prompt="a boat", width=width, height=64, steps=2, seed=3)
        assert engine.generate(request).images[0].size == (width, 64)
    assert (unet.static_calls > 0) is (keep > 0) and unet.calls == 4
    assert unet.dynamic_calls == (4 if keep == 0 else 0) and (unet.compiled is None) is (keep > 0)


def test_a_lazy_dynamic_model_compiles_when_a_variant_fails_or_variants_are_turned_off(ov_engine, unet_xml):
    core = ov.Core()
    source = StaticSource(core.read_model(str(unet_xml)), core, "CPU", CONFIG)
    with pytest.raises(ValueError, match="needs a source"):
        CompiledNetwork("unet", None)
    net = CompiledNetwork("unet", None, source=source, static_shapes=1)
    assert net.compiled is None and net.precision == "f32"  # the precision it will compile with
    net.static._compile = lambda shapes: (_ for _ in ()).throw(RuntimeError("out of memory"))
    inputs = unet_inputs(ov_engine, 1, 8, 8, seed=12)
    (out,) = net(*inputs)  # no variant: the dynamic model is compiled now and serves the call
    assert net.compiled is not None and net.dynamic_calls == 1 and out.shape == inputs[0].shape
    other = CompiledNetwork("unet", None, source=source, static_shapes=1)
    other.set_static_shapes(0)  # every call runs the dynamic model from now on: compiled right away
    assert other.compiled is not None and close(other(*inputs)[0], out)
