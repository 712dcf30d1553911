"""studio.engines.adapters on the demo model's real components: LoRAs per request (kohya and diffusers/PEFT files),
without changing base weights, in a small LRU; the VAE cache.

Every image is made the way LocalEngine makes it: a per-call pipeline sharing the shared pipeline's modules.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import AutoPipelineForImage2Image, DiffusionPipeline, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import save_file

from studio import models
from studio.engines.adapters import ActiveLora, LoraSet, VaeCache
from studio.models.demo_extras import DEMO_LORA_ALPHA, DEMO_LORA_RANK, build_demo_lora, build_demo_vae
from studio.types import RequestError


@dataclass(frozen=True)
class Tag:
    """What studio.prompts.extract_loras gives for `<lora:NAME:WEIGHT>`."""

    name: str
    weight: float = 1.0


def _write_peft_lora(unet: UNet2DConditionModel, folder: Path) -> Path:
    """A diffusers/PEFT-format LoRA (``unet.…lora_A/lora_B`` keys + adapter metadata), as diffusers' trainers save."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        trainee = UNet2DConditionModel.from_config(unet.config)
        config = LoraConfig(
            r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False
        )
        trainee.add_adapter(config)
    state = {k: v * 3 for k, v in get_peft_model_state_dict(trainee).items()}
    StableDiffusionPipeline.save_lora_weights(
        folder,
        unet_lora_layers=state,
        weight_name="peft_style.safetensors",
        unet_lora_adapter_metadata=config.to_dict(),
    )
    return folder / "peft_style.safetensors"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_demo_lora(root / "Lora" / "demo.safetensors")
    build_demo_lora(root / "Lora" / "second.safetensors", seed=1)
    build_demo_lora(root / "Lora" / "styles" / "third.safetensors", seed=2)
    build_demo_vae(root / "VAE" / "demo-vae.safetensors")
    return root


@pytest.fixture(scope="module")
def pipe(models_dir: Path) -> DiffusionPipeline:
    """A fresh demo pipeline for this module only: adapters are added to its modules."""
    pipe = models.load_pipeline(models.DEMO_SOURCE)
    _write_peft_lora(pipe.unet, models_dir / "Lora")
    return pipe


def _run(pipe: DiffusionPipeline, vae=None, prompt: str = "a red fox in snow") -> np.ndarray:
    components = dict(pipe.components, **({"vae": vae} if vae is not None else {}))
    call = type(pipe)(**components)
    call.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        out = call(
            prompt,
            num_inference_steps=3,
            width=64,
            height=64,
            generator=torch.Generator("cpu").manual_seed(5),
            output_type="np",
        )
    return out.images[0]


@pytest.fixture(scope="module")
def before(pipe: DiffusionPipeline) -> np.ndarray:
    """The image made before any LoRA touched the modules (module scope: computed first, once)."""
    return _run(pipe)


@pytest.fixture
def loras(models_dir: Path, pipe: DiffusionPipeline, before: np.ndarray):
    """A LoraSet; afterwards its adapters are deleted so each test starts from plain modules."""
    lora_set = LoraSet(models_dir)
    yield lora_set
    lora_set.unload(pipe)


def _levels(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean() * 255)


def test_kohya_lora_changes_pixels_and_a_request_without_tags_is_as_before(
    loras: LoraSet, pipe: DiffusionPipeline, before: np.ndarray
) -> None:
    active, warnings = loras.activate(pipe, [Tag("demo")])
    assert warnings == []
    assert [(a.name, a.weight, a.path.name) for a in active] == [("demo", 1.0, "demo.safetensors")]
    assert re.fullmatch(r"[0-9a-f]{12}", active[0].hash)
    with_lora = _run(pipe)
    assert _levels(with_lora, before) > 3.0
    assert loras.activate(pipe, []) == ([], [])
    assert np.array_equal(_run(pipe), before)
    loras.activate(pipe, [Tag("demo")])
    assert np.array_equal(_run(pipe), with_lora)  # the adapter is reused, not reloaded, and gives the same pixels
    assert len(loras.loaded(pipe)) == 1


def test_peft_format_lora_changes_pixels_and_switches_off(
    loras: LoraSet, pipe: DiffusionPipeline, before: np.ndarray
) -> None:
    active, warnings = loras.activate(pipe, [Tag("peft_style", 0.8)])
    assert warnings == [] and [a.name for a in active] == ["peft_style"]
    assert _levels(_run(pipe), before) > 1.0
    loras.deactivate(pipe)
    assert np.array_equal(_run(pipe), before)


def test_weight_zero_is_identical_to_no_tag(loras: LoraSet, pipe: DiffusionPipeline, before: np.ndarray) -> None:
    assert loras.activate(pipe, [Tag("demo", 0.0)]) == ([], [])
    assert np.array_equal(_run(pipe), before)
    loras.activate(pipe, [Tag("demo")])  # now loaded: weight 0 must still be exactly nothing
    assert loras.activate(pipe, [Tag("demo", 0)]) == ([], [])
    assert np.array_equal(_run(pipe), before)
    active, _ = loras.activate(pipe, [Tag("demo", 0), Tag("second", 0.7)])
    assert [a.name for a in active] == ["second"]
    only_second = _run(pipe)
    loras.activate(pipe, [Tag("second", 0.7)])
    assert np.array_equal(_run(pipe), only_second)


def test_unknown_name_warns_naming_it_and_the_image_is_still_made(
    loras: LoraSet, pipe: DiffusionPipeline, before: np.ndarray, models_dir: Path
) -> None:
    active, warnings = loras.activate(pipe, [Tag("fubuki"), Tag("demo")])
    assert [a.name for a in active] == ["demo"]
    assert warnings == [
        f'lora: no LoRA named "fubuki" in {models_dir / "Lora"} (available: demo, peft_style, second, third)'
    ]
    active, warnings = loras.activate(pipe, [Tag("fubuki")])
    assert active == [] and "fubuki" in warnings[0]
    assert np.array_equal(_run(pipe), before)


def test_kohya_alpha_and_weight_scale_like_a1111(loras: LoraSet, pipe: DiffusionPipeline, models_dir: Path) -> None:
    """A1111: y = W x + weight * alpha / rank * up(down(x)), for the UNet and the text encoder alike."""
    from safetensors import safe_open

    loras.activate(pipe, [Tag("demo", 0.6)])
    layers = {
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k": (
            pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2.to_k
        ),
        "lora_te_text_model_encoder_layers_2_mlp_fc1": pipe.text_encoder.encoder.layers[2].mlp.fc1,
    }
    with safe_open(str(models_dir / "Lora" / "demo.safetensors"), framework="pt") as handle:
        for key, layer in layers.items():
            down, up = handle.get_tensor(f"{key}.lora_down.weight"), handle.get_tensor(f"{key}.lora_up.weight")
            x = torch.randn(3, down.shape[1], generator=torch.Generator("cpu").manual_seed(0))
            with torch.inference_mode():
                expected = layer.base_layer(x) + 0.6 * DEMO_LORA_ALPHA / DEMO_LORA_RANK * (x @ down.T @ up.T)
                torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_weights_and_several_loras_each_change_the_image(loras: LoraSet, pipe: DiffusionPipeline) -> None:
    images = {}
    for label, tags in {
        "demo 1": [Tag("demo")],
        "demo 0.5": [Tag("demo", 0.5)],
        "demo -1": [Tag("demo", -1.0)],
        "demo+third": [Tag("demo"), Tag("third", 0.8)],
    }.items():
        active, warnings = loras.activate(pipe, tags)
        assert warnings == [] and len(active) == len(tags)
        images[label] = _run(pipe)
    labels = list(images)
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            assert _levels(images[a], images[b]) > 0.5, (a, b)


def test_the_same_name_twice_adds_the_weights_with_a_warning(loras: LoraSet, pipe: DiffusionPipeline) -> None:
    active, warnings = loras.activate(pipe, [Tag("demo", 0.25), Tag("demo", 0.5)])
    assert [(a.name, a.weight) for a in active] == [("demo", 0.75)]
    assert warnings == ['lora: "demo" is used more than once; its weights are added (0.75)']
    twice = _run(pipe)
    loras.activate(pipe, [Tag("demo", 0.75)])
    assert np.array_equal(_run(pipe), twice)


def _adapter_params(pipe: DiffusionPipeline) -> int:
    return sum(p.numel() for m in (pipe.unet, pipe.text_encoder) for n, p in m.named_parameters() if "lora_" in n)


def _rss_mb() -> float:
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def test_lru_evicts_adapters_and_memory_does_not_pile_up(
    models_dir: Path, pipe: DiffusionPipeline, before: np.ndarray
) -> None:
    loras = LoraSet(models_dir, max_loaded=2)
    try:
        first = {}
        for name in ("demo", "second", "third"):
            loras.activate(pipe, [Tag(name)])
            first[name] = _run(pipe)
        assert [p.stem for p in loras.loaded(pipe)] == ["second", "third"]
        assert sorted(pipe.get_list_adapters()["unet"]) == sorted(pipe.get_list_adapters()["text_encoder"])
        assert len(pipe.get_list_adapters()["unet"]) == 2
        params_two = _adapter_params(pipe)
        # Cycles of 3 LoRAs and back to none with room for 2: every request loads one and deletes one.
        rss = []
        for _cycle in range(4):
            for name in ("demo", "second", "third", None):
                loras.activate(pipe, [Tag(name)] if name else [])
                if name == "demo":
                    assert np.array_equal(_run(pipe), first["demo"])  # reloaded after eviction: same pixels
            rss.append(_rss_mb())
            assert len(loras.loaded(pipe)) == 2 and _adapter_params(pipe) == params_two
        assert rss[-1] - rss[0] < 50, rss  # loose: the bench measures properly
        assert np.array_equal(_run(pipe), before)
    finally:
        loras.unload(pipe)
    assert pipe.get_list_adapters().get("unet", []) == [] and _adapter_params(pipe) == 0
    assert np.array_equal(_run(pipe), before)


def test_a_request_may_use_more_loras_than_the_cache_keeps(models_dir: Path, pipe: DiffusionPipeline) -> None:
    loras = LoraSet(models_dir, max_loaded=1)
    try:
        active, warnings = loras.activate(pipe, [Tag("demo"), Tag("second"), Tag("third")])
        assert warnings == [] and len(active) == 3 and len(loras.loaded(pipe)) == 3
        loras.activate(pipe, [Tag("second")])
        assert [p.stem for p in loras.loaded(pipe)] == ["second"]
    finally:
        loras.unload(pipe)


def test_loading_a_lora_leaves_the_other_loaded_ones_unchanged(loras: LoraSet, pipe: DiffusionPipeline) -> None:
    loras.activate(pipe, [Tag("demo")])
    demo_alone = _run(pipe)
    loras.activate(pipe, [Tag("second")])  # transformers' load report calls demo's weights "newly initialized"
    loras.activate(pipe, [Tag("demo")])
    assert np.array_equal(_run(pipe), demo_alone)


def test_task_pipelines_share_the_adapters(loras: LoraSet, pipe: DiffusionPipeline, before: np.ndarray) -> None:
    img2img = AutoPipelineForImage2Image.from_pipe(pipe)
    loras.activate(img2img, [Tag("demo")])
    assert loras.loaded(pipe) == loras.loaded(img2img)
    assert _levels(_run(pipe), before) > 3.0
    loras.activate(img2img, [])
    assert np.array_equal(_run(pipe), before)


def test_a_changed_file_is_loaded_again(tmp_path: Path, pipe: DiffusionPipeline) -> None:
    build_demo_lora(tmp_path / "Lora" / "mutable.safetensors", seed=0)
    loras = LoraSet(tmp_path)
    try:
        first_hash = loras.activate(pipe, [Tag("mutable")])[0][0].hash
        first = _run(pipe)
        path = build_demo_lora(tmp_path / "Lora" / "mutable.safetensors", seed=5)
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        active, _ = loras.activate(pipe, [Tag("mutable")])
        assert active[0].hash != first_hash
        assert _levels(_run(pipe), first) > 1.0
        assert len(loras.loaded(pipe)) == 1
    finally:
        loras.unload(pipe)


def test_files_that_cannot_be_applied_are_warnings_and_leave_nothing_behind(
    tmp_path: Path, pipe: DiffusionPipeline, before: np.ndarray
) -> None:
    folder = tmp_path / "Lora"
    folder.mkdir()
    key = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    save_file(
        {f"{key}.lora_down.weight": torch.ones(4, 7), f"{key}.lora_up.weight": torch.ones(64, 4)},
        str(folder / "other_model.safetensors"),
    )

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch /tmp/studio-adapter-pwned",))

    torch.save({f"{key}.lora_down.weight": torch.ones(4, 64), "x": Payload()}, folder / "evil.pt")
    (folder / "broken.safetensors").write_bytes(b"garbage")
    loras = LoraSet(tmp_path)
    active, warnings = loras.activate(pipe, [Tag("other_model"), Tag("evil"), Tag("broken")])
    assert active == []
    assert warnings[0].startswith('lora: "other_model" was not applied: other_model.safetensors does not fit')
    assert warnings[1].startswith('lora: "evil" was not applied: evil.pt: refused to load')
    assert warnings[2].startswith('lora: "broken" was not applied: ')
    assert not Path("/tmp/studio-adapter-pwned").exists()
    assert pipe.get_list_adapters().get("unet", []) == [] and loras.loaded(pipe) == []
    assert np.array_equal(_run(pipe), before)


def test_pickled_lora_files_load_weights_only(tmp_path: Path, pipe: DiffusionPipeline, before: np.ndarray) -> None:
    from safetensors.torch import load_file

    source = build_demo_lora(tmp_path / "src.safetensors")
    (tmp_path / "Lora").mkdir()
    torch.save(load_file(str(source)), tmp_path / "Lora" / "as_pickle.pt")
    loras = LoraSet(tmp_path)
    try:
        active, warnings = loras.activate(pipe, [Tag("as_pickle")])
        assert warnings == [] and [a.name for a in active] == ["as_pickle"]
        assert _levels(_run(pipe), before) > 3.0
    finally:
        loras.unload(pipe)


def test_openvino_models_refuse_loras_with_a_clear_error(
    loras: LoraSet, pipe: DiffusionPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = SimpleNamespace(is_openvino_module=lambda module: module is pipe.unet)
    monkeypatch.setitem(sys.modules, "studio.engines.openvino_modules", fake)
    with pytest.raises(RequestError) as caught:
        loras.activate(pipe, [Tag("demo", 0.5)])
    assert caught.value.field == "prompt" and caught.value.value == "<lora:demo:0.5>"
    assert "LoRAs need the torch engine" in str(caught.value)
    # Nothing to apply is fine there: no tags, weight 0, unknown names (a warning).
    assert loras.activate(pipe, []) == ([], [])
    assert loras.activate(pipe, [Tag("demo", 0)]) == ([], [])
    assert loras.activate(pipe, [Tag("nope")])[1][0].startswith('lora: no LoRA named "nope"')


def test_a_non_finite_weight_is_a_request_error(loras: LoraSet, pipe: DiffusionPipeline) -> None:
    with pytest.raises(RequestError, match="a LoRA weight must be a finite number") as caught:
        loras.activate(pipe, [Tag("demo", float("nan"))])
    assert caught.value.field == "prompt"


def test_available_lists_the_lora_folder(loras: LoraSet) -> None:
    assert [f.name for f in loras.available()] == ["demo", "peft_style", "second", "third"]
    assert isinstance(ActiveLora("a", 1.0, Path("a"), "0" * 12).hash, str)


def test_vae_cache_gives_the_chosen_vae_or_none_and_changes_pixels(
    models_dir: Path, pipe: DiffusionPipeline, before: np.ndarray
) -> None:
    vaes = VaeCache(models_dir)
    assert vaes.get("Automatic", pipe) is None and vaes.get("None", pipe) is None
    chosen = vaes.get("demo-vae.safetensors", pipe)
    assert chosen is not None and chosen is not pipe.vae
    assert vaes.get("demo-vae", pipe) is chosen  # cached; the unique stem names it too
    assert vaes.file("demo-vae.safetensors").path == models_dir / "VAE" / "demo-vae.safetensors"
    assert vaes.file("Automatic") is None
    assert _levels(_run(pipe, vae=chosen), before) > 3.0
    assert np.array_equal(_run(pipe), before)  # the model's own VAE is untouched


def test_vae_cache_errors_name_the_field_and_list_the_files(models_dir: Path, pipe: DiffusionPipeline) -> None:
    vaes = VaeCache(models_dir)
    with pytest.raises(RequestError) as caught:
        vaes.get("vaeFtMse840000EmaPruned_vae.safetensors", pipe)
    assert caught.value.field == "vae" and caught.value.value == "vaeFtMse840000EmaPruned_vae.safetensors"
    assert str(caught.value).endswith("available: Automatic, Approx (TAESD), demo-vae.safetensors")


def test_vae_cache_refuses_unusable_files_as_request_errors(tmp_path: Path, pipe: DiffusionPipeline) -> None:
    class Payload:
        def __reduce__(self):
            return (os.system, ("touch /tmp/studio-vaecache-pwned",))

    (tmp_path / "VAE").mkdir()
    torch.save({"state_dict": {}, "x": Payload()}, tmp_path / "VAE" / "evil.pt")
    with pytest.raises(RequestError, match=r"vae: evil.pt: refused to load: .*pickled code") as caught:
        VaeCache(tmp_path).get("evil.pt", pipe)
    assert caught.value.field == "vae"
    assert not Path("/tmp/studio-vaecache-pwned").exists()


def test_vae_cache_is_a_small_lru(tmp_path: Path, pipe: DiffusionPipeline) -> None:
    for name in ("a", "b", "c"):
        build_demo_vae(tmp_path / "VAE" / f"{name}.safetensors")
    vaes = VaeCache(tmp_path, max_loaded=2)
    a = vaes.get("a.safetensors", pipe)
    vaes.get("b.safetensors", pipe)
    assert vaes.get("a.safetensors", pipe) is a  # a is now the most recent
    vaes.get("c.safetensors", pipe)  # evicts b
    assert vaes.get("a.safetensors", pipe) is a
    assert len(vaes._cache) == 2
