"""The hires-fix upscaler registry: A1111's names, model files found in the models folder, errors naming the field."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from studio import upscalers
from studio.types import RequestError
from studio.upscalers import UpscalerKind

REPO = Path(__file__).resolve().parents[2]
BUILTIN = [
    "Latent",
    "Latent (antialiased)",
    "Latent (bicubic)",
    "Latent (bicubic antialiased)",
    "Latent (nearest)",
    "Latent (nearest-exact)",
    "None",
    "Lanczos",
    "Nearest",
]


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"weights")
    return path


def test_builtin_names_in_a1111_order() -> None:
    assert upscalers.upscaler_names() == BUILTIN
    assert upscalers.upscaler_names(Path("/nonexistent/models")) == BUILTIN


@pytest.mark.parametrize(
    ("name", "mode", "antialias"),
    [
        ("Latent", "bilinear", False),
        ("Latent (antialiased)", "bilinear", True),
        ("Latent (bicubic)", "bicubic", False),
        ("Latent (bicubic antialiased)", "bicubic", True),
        ("Latent (nearest)", "nearest", False),
        ("Latent (nearest-exact)", "nearest-exact", False),
    ],
)
def test_latent_upscalers_carry_a1111_interpolation(name: str, mode: str, antialias: bool) -> None:
    spec = upscalers.get(name)
    assert (spec.name, spec.kind, spec.mode, spec.antialias) == (name, UpscalerKind.LATENT, mode, antialias)
    assert spec.is_latent


@pytest.mark.parametrize(("name", "mode"), [("None", "lanczos"), ("Lanczos", "lanczos"), ("Nearest", "nearest")])
def test_image_upscalers(name: str, mode: str) -> None:
    spec = upscalers.get(name)
    assert (spec.kind, spec.mode, spec.is_latent) == (UpscalerKind.IMAGE, mode, False)


@pytest.mark.parametrize(
    ("given", "canonical"),
    [("latent", "Latent"), ("LANCZOS", "Lanczos"), ("latent (bicubic antialiased)", "Latent (bicubic antialiased)")],
)
def test_names_match_like_sampler_names(given: str, canonical: str) -> None:
    assert upscalers.get(given).name == canonical


def test_model_files_are_listed_by_stem_after_the_builtins(tmp_path: Path) -> None:
    touch(tmp_path / "ESRGAN" / "4x-UltraSharp.pth")
    touch(tmp_path / "ESRGAN" / "anime.safetensors")
    touch(tmp_path / "ESRGAN" / "old.pt")
    touch(tmp_path / "ESRGAN" / "README.txt")
    touch(tmp_path / "ESRGAN" / ".hidden.pth")
    touch(tmp_path / "ESRGAN" / "sub" / "nested.pth")  # top level only, like A1111's listing
    touch(tmp_path / "RealESRGAN" / "RealESRGAN_x4plus_anime_6B.pth")
    names = upscalers.upscaler_names(tmp_path)
    assert names == BUILTIN + ["4x-UltraSharp", "anime", "old", "R-ESRGAN 4x+ Anime6B"]
    spec = upscalers.get("4x-UltraSharp", tmp_path)
    assert (spec.kind, spec.path) == (UpscalerKind.MODEL, tmp_path / "ESRGAN" / "4x-UltraSharp.pth")


def test_a1111_real_esrgan_names_find_their_files(tmp_path: Path) -> None:
    path = touch(tmp_path / "ESRGAN" / "RealESRGAN_x4plus_anime_6B.pth")
    by_a1111_name = upscalers.get("R-ESRGAN 4x+ Anime6B", tmp_path)
    assert (by_a1111_name.name, by_a1111_name.path) == ("R-ESRGAN 4x+ Anime6B", path)
    assert upscalers.get("RealESRGAN_x4plus_anime_6B", tmp_path) == by_a1111_name  # the stem works too


def test_a1111_name_without_its_file_says_which_file_to_add(tmp_path: Path) -> None:
    with pytest.raises(RequestError) as caught:
        upscalers.get("R-ESRGAN 4x+ Anime6B", tmp_path)
    err = caught.value
    assert (err.field, err.value) == ("hires_upscaler", "R-ESRGAN 4x+ Anime6B")
    assert "RealESRGAN_x4plus_anime_6B.pth" in str(err) and str(tmp_path / "ESRGAN") in str(err)
    assert "nothing is downloaded" in str(err)


def test_unknown_name_lists_what_is_available(tmp_path: Path) -> None:
    touch(tmp_path / "ESRGAN" / "4x-UltraSharp.pth")
    with pytest.raises(RequestError) as caught:
        upscalers.get("SwinIR_4x", tmp_path)
    err = caught.value
    assert (err.field, err.value) == ("hires_upscaler", "SwinIR_4x")
    message = str(err)
    assert message.startswith("hires_upscaler: unknown upscaler 'SwinIR_4x'")
    for name in BUILTIN + ["4x-UltraSharp"]:
        assert name in message


@pytest.mark.parametrize("bad", ["", "   ", None, 3])
def test_empty_or_non_text_names_are_refused(bad: object) -> None:
    with pytest.raises(RequestError) as caught:
        upscalers.get(bad)  # type: ignore[arg-type]
    assert caught.value.field == "hires_upscaler"


def test_name_clashes_keep_the_first_file_and_never_shadow_builtins(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = touch(tmp_path / "ESRGAN" / "x4.pth")
    touch(tmp_path / "ESRGAN" / "x4.safetensors")
    touch(tmp_path / "RealESRGAN" / "x4.pth")
    touch(tmp_path / "ESRGAN" / "Lanczos.pth")
    with caplog.at_level(logging.WARNING, logger="studio.upscalers"):
        models = upscalers.discover_upscaler_models(tmp_path)
    assert [(m.name, m.path) for m in models] == [("x4", first)]
    assert upscalers.get("Lanczos", tmp_path).kind is UpscalerKind.IMAGE
    assert sum("already taken" in r.message for r in caplog.records) == 3


def test_import_stays_light() -> None:
    code = "import sys, studio.upscalers; print(sorted(m for m in ('torch', 'diffusers', 'PIL') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"
