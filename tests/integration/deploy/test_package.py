"""model.tar.gz works as the SageMaker PyTorch inference container uses it.

The tarball is extracted to a temp folder (standing in for /opt/ml/model) and a fresh Python process, whose only
path to our code is the extracted code/ folder, runs model_fn → transform_fn on the demo model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

from studio.deploy import DeployPlan, PlanError, container_requirements, model_environment, package_model
from studio.deploy.__main__ import main
from studio.testing.servers import REPO

TOOLKIT = REPO / "studio" / "serving" / "toolkit.py"


@pytest.fixture(scope="module")
def demo_dir() -> Path:
    from studio.models import demo_model_dir

    return demo_model_dir()


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A studio models folder with the demo LoRA (one in a subfolder too) and the demo VAE."""
    from studio.models.demo_extras import build_demo_lora, build_demo_vae

    root = tmp_path_factory.mktemp("models")
    (root / "Lora" / "style").mkdir(parents=True)
    (root / "VAE").mkdir()
    build_demo_lora(root / "Lora" / "demo-lora.safetensors")
    build_demo_lora(root / "Lora" / "style" / "ink.safetensors", seed=1)
    build_demo_vae(root / "VAE" / "demo-vae.safetensors")
    return root


@pytest.fixture(scope="module")
def packaged(demo_dir: Path, models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model.tar.gz, extracted folder) for the demo model with a LoRA and a VAE, as a local-folder deploy with
    --lora demo-lora --vae demo-vae.safetensors would package it."""
    work = tmp_path_factory.mktemp("package")
    plan = DeployPlan(
        name="pkg", model=str(demo_dir), loras=["demo-lora"], vaes=["demo-vae.safetensors"], models_dir=models_dir
    )
    tarball = package_model(plan, work / "model.tar.gz")
    extracted = work / "opt-ml-model"
    extracted.mkdir()
    with tarfile.open(tarball) as tar:
        tar.extractall(extracted, filter="data")  # "data" refuses absolute paths, .. and links
    return tarball, extracted


def test_tarball_layout(packaged, demo_dir):
    tarball, extracted = packaged
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
    assert all(not n.startswith(("/", "..")) and "__pycache__" not in n and not n.endswith(".pyc") for n in names)
    # The toolkit's handlers are the entry point the DLC runs.
    assert (extracted / "code" / "inference.py").read_bytes() == TOOLKIT.read_bytes()
    # Our package, .py files and configs only, without the test support.
    assert (extracted / "code" / "studio" / "__init__.py").is_file()
    assert (extracted / "code" / "studio" / "serving" / "toolkit.py").is_file()
    assert (extracted / "code" / "studio" / "wire" / "codec.py").is_file()
    assert not (extracted / "code" / "studio" / "testing").exists()
    assert not any(n.startswith("code/studio/testing/") for n in names)
    shipped_configs = sorted(p.relative_to(REPO / "studio") for p in (REPO / "studio" / "configs").rglob("*.json"))
    assert shipped_configs and all((extracted / "code" / "studio" / p).is_file() for p in shipped_configs)
    code_suffixes = {p.suffix for p in (extracted / "code" / "studio").rglob("*") if p.is_file()}
    assert code_suffixes <= {".py", ".json", ".txt", ".yaml"}
    # requirements: what the DLC lacks, never torch (the DLC's CUDA build must stay).
    requirements = (extracted / "code" / "requirements.txt").read_text().split()
    names_only = {r.split("==")[0].lower() for r in requirements}
    assert {"diffusers", "transformers", "safetensors"} <= names_only
    assert "torch" not in names_only and "gradio" not in names_only
    # The model files sit at the root, as /opt/ml/model/ will hold them.
    demo_files = sorted(p.relative_to(demo_dir) for p in demo_dir.rglob("*") if p.is_file())
    assert demo_files and all((extracted / p).is_file() for p in demo_files)
    assert (extracted / "model_index.json").read_bytes() == (demo_dir / "model_index.json").read_bytes()


def test_lora_and_vae_files_go_into_lora_and_vae_next_to_the_model(packaged, models_dir):
    _, extracted = packaged
    assert (extracted / "Lora" / "demo-lora.safetensors").read_bytes() == (
        models_dir / "Lora" / "demo-lora.safetensors"
    ).read_bytes()
    assert (extracted / "VAE" / "demo-vae.safetensors").is_file()
    assert sorted(p.name for p in (extracted / "Lora").iterdir()) == ["demo-lora.safetensors"]  # only what was asked
    # The engine finds them in the unpacked archive, and the model is still found beside them.
    from studio.models import model_in_dir
    from studio.models.lora import discover_loras
    from studio.models.vae import discover_vaes

    assert model_in_dir(extracted) == str(extracted)
    assert [lora.name for lora in discover_loras(extracted)] == ["demo-lora"]
    assert [vae.name for vae in discover_vaes(extracted)] == ["demo-vae.safetensors"]
    assert model_environment(DeployPlan(name="e", model="demo"))["STUDIO_MODELS_DIR"] == "/opt/ml/model"


def test_files_by_path_and_by_name_in_subfolders_single_file_model(models_dir, tmp_path):
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"weights")
    own = tmp_path / "mine.pt"
    own.write_bytes(b"vae")
    plan = DeployPlan(
        name="f",
        model=str(checkpoint),
        loras=["ink", str(models_dir / "Lora" / "demo-lora.safetensors")],
        vaes=[str(own)],
        models_dir=models_dir,
    )
    with tarfile.open(package_model(plan, tmp_path / "a.tar.gz")) as tar:
        names = set(tar.getnames())
    # A name in a subfolder keeps its path under Lora/, so <lora:ink> and <lora:style/ink> still find it.
    assert {"model.safetensors", "Lora/style/ink.safetensors", "Lora/demo-lora.safetensors", "VAE/mine.pt"} <= names
    extracted = tmp_path / "x"
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        tar.extractall(extracted, filter="data")
    from studio.models import model_in_dir

    assert model_in_dir(extracted) == str(extracted / "model.safetensors")


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"loras": ["nope"]}, "lora", r"'nope' is neither a file nor a LoRA in .*Lora \(found: demo-lora, ink\)"),
        ({"vaes": ["nope.pt"]}, "vae", r"neither a file nor a VAE in .*VAE \(found: demo-vae.safetensors\)"),
        ({"loras": ["README"]}, "lora", "is not a LoRA file"),
        ({"loras": ["demo-lora", "demo-lora"]}, "lora", "given twice"),
        ({"model": "s3://bucket/model.tar.gz", "vaes": ["demo-vae.safetensors"]}, "vae", "s3:// archive"),
    ],
)
def test_bad_lora_and_vae_options_name_the_option(models_dir, tmp_path, monkeypatch, changes, field, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "README").write_text("not a LoRA")
    plan = DeployPlan(**{"name": "b", "model": "demo", "models_dir": models_dir, **changes})
    with pytest.raises(PlanError, match=words) as caught:
        plan.validate(check_aws=False)
    assert caught.value.field == field


def test_container_requirements_leave_torch_to_the_dlc():
    requirements = container_requirements()
    names = {r.split("==")[0].lower() for r in requirements}
    assert "diffusers" in names and "transformers" in names
    assert not names & {"torch", "torchvision", "gradio", "gradio_client"}
    assert "openai-clip" in names  # single-file checkpoints build their CLIP tokenizer from its vocabulary
    assert not names & {"openvino", "openvino-telemetry", "nncf"}  # the CPU engine: a GPU endpoint never uses it
    assert {"openvino", "nncf"} <= {r.split("==")[0].lower() for r in container_requirements(gpu=False)}


@pytest.mark.parametrize(
    ("wheel", "python", "runs"),
    [
        ("diffusers-0.42.1-py3-none-any.whl", "3.12", True),
        ("ninja-1.13.2-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", "3.12", True),  # NNCF needs it
        ("numpy-2.4.6-cp312-cp312-manylinux_2_27_x86_64.whl", "3.12", True),
        ("numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.whl", "3.12", False),
        ("cryptography-46.0.0-cp311-abi3-manylinux_2_34_x86_64.whl", "3.12", True),
        ("cryptography-46.0.0-cp311-abi3-manylinux_2_34_x86_64.whl", "3.10", False),
        ("oldpkg-1.0-py2-none-any.whl", "3.12", False),
    ],
)
def test_a_vendored_wheel_must_run_on_the_containers_python(wheel, python, runs):
    from studio.deploy.wheels import for_python

    assert for_python(wheel, python) is runs


def test_vendored_wheels_are_the_pinned_closure_for_the_containers_python(monkeypatch, tmp_path):
    """The closure follows the installed versions, evaluates markers for the target Python, leaves out what the DLC
    has (torch), and the package's requirements install them with no index (the download is faked here; the real
    one runs in tests/integration/test_dlc_stack.py)."""
    import tarfile

    from studio.deploy import package as package_module
    from studio.deploy import wheels

    pins = wheels.pinned_closure(["accelerate==1.15.0", "diffusers==0.42.1"], wheels.WheelTarget("3.12"))
    names = {pin.split("==")[0] for pin in pins}
    assert {"accelerate", "diffusers", "huggingface-hub", "safetensors", "numpy"} <= names
    assert not any(wheels.PROVIDED.match(name) for name in names)  # torch and its CUDA stack come with the DLC
    assert all("==" in pin for pin in pins)

    fetched = []

    def fake_cached(pins, target):
        fetched.append((pins, target))
        wheel = tmp_path / "diffusers-0.42.1-py3-none-any.whl"
        wheel.write_bytes(b"PK")
        return [wheel]

    monkeypatch.setattr(package_module, "cached_wheels", fake_cached)
    plan = DeployPlan(name="v", model="demo", network_isolation=True)  # isolation implies vendored wheels
    with tarfile.open(package_model(plan, tmp_path / "m.tgz")) as tar:
        requirements = tar.extractfile("code/requirements.txt").read().decode().splitlines()
        assert "code/wheels/diffusers-0.42.1-py3-none-any.whl" in tar.getnames()
    assert requirements[1:3] == ["--no-index", "--find-links wheels"] and "diffusers==0.42.1" in requirements
    assert not any(line.startswith("openvino") for line in requirements)
    assert fetched[0][1].python_version == "3.12"  # the DLC's Python by default


def test_single_file_and_hub_models(tmp_path):
    checkpoint = tmp_path / "my-model.safetensors"
    checkpoint.write_bytes(b"not really weights")
    with tarfile.open(package_model(DeployPlan(name="f", model=str(checkpoint)), tmp_path / "a.tar.gz")) as t:
        names = t.getnames()
    assert "my-model.safetensors" in names and "code/inference.py" in names

    hub = DeployPlan(name="h", model="stabilityai/sd-turbo")
    with tarfile.open(package_model(hub, tmp_path / "b.tar.gz")) as tar:
        names = tar.getnames()
    assert all(n.startswith("code/") for n in names)  # only our code; the container downloads the model
    assert model_environment(hub)["STUDIO_MODEL"] == "stabilityai/sd-turbo"


def test_package_cli(tmp_path, capsys):
    checkpoint = tmp_path / "m.safetensors"
    checkpoint.write_bytes(b"weights")
    out = tmp_path / "out" / "model.tar.gz"
    assert main(["package", "--model", str(checkpoint), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    with tarfile.open(out) as tar:
        assert "m.safetensors" in tar.getnames()
    assert main(["package", "--model", str(tmp_path / "missing-folder/"), "--out", str(out)]) == 1
    assert "model:" in capsys.readouterr().out


def test_package_cli_with_lora_and_vae(models_dir, tmp_path, capsys):
    out = tmp_path / "model.tar.gz"
    argv = ["package", "--model", "demo", "--out", str(out), "--models-dir", str(models_dir)]
    assert main([*argv, "--lora", "demo-lora", "--lora", "style/ink", "--vae", "demo-vae.safetensors"]) == 0
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
    assert {"Lora/demo-lora.safetensors", "Lora/style/ink.safetensors", "VAE/demo-vae.safetensors"} <= names
    assert main([*argv, "--lora", "missing"]) == 1
    assert "error: validate: lora: 'missing' is neither a file nor a LoRA" in capsys.readouterr().out


RUNNER = textwrap.dedent(
    """
    import base64, io, json, sys
    from pathlib import Path

    code_dir, model_dir = Path(sys.argv[1]).resolve(), sys.argv[2]
    import inference  # code/inference.py, as the toolkit imports SAGEMAKER_PROGRAM

    model = inference.model_fn(model_dir)
    models_dir = str(getattr(model.engine, "models_dir", ""))
    request = {"prompt": "a photo of a cat", "width": 64, "height": 64, "steps": 2, "seed": 1234}
    body = inference.transform_fn(model, json.dumps(request), "application/json", "application/json")
    content_type = "application/json"
    if isinstance(body, tuple):
        body, content_type = body
    payload = json.loads(body)

    from PIL import Image

    sizes = [Image.open(io.BytesIO(base64.b64decode(img))).size for img in payload["images"]]
    loaded = {name: getattr(mod, "__file__", None) for name, mod in sys.modules.items()
              if name == "studio" or name.startswith("studio.")}
    print(json.dumps({
        "sizes": sizes,
        "seeds": payload.get("seeds"),
        "content_type": content_type,
        "inference_file": inference.__file__,
        "studio_modules": loaded,
        "code_dir": str(code_dir),
        "models_dir": models_dir,
    }))
    """
)


def test_inference_handlers_run_from_the_extracted_tarball(packaged, tmp_path):
    _, extracted = packaged
    code_dir = extracted / "code"
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STUDIO_MODEL", "PYTHON"))}
    env.update(
        PYTHONPATH=str(code_dir),  # like the toolkit: code/ on the path, nothing from the repo
        HF_HUB_OFFLINE="1",
        SAGEMAKER_PROGRAM="inference.py",
        SAGEMAKER_SUBMIT_DIRECTORY=str(code_dir),
        SM_MODEL_DIR=str(extracted),
        STUDIO_MODELS_DIR=str(extracted),  # model_environment's /opt/ml/model, here
    )
    out = subprocess.run(
        [sys.executable, "-P", str(runner), str(code_dir), str(extracted)],  # -P: no script dir / cwd on sys.path
        cwd=code_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["sizes"] == [[64, 64]]  # the model was found beside Lora/ and VAE/
    assert Path(result["models_dir"]) == extracted  # the engine looks for LoRAs and VAEs in the unpacked archive
    assert result["seeds"] == [1234]
    assert result["content_type"] == "application/json"
    # Everything came from the tarball, not from the repo.
    assert Path(result["inference_file"]).resolve() == (code_dir / "inference.py").resolve()
    assert result["studio_modules"], "the handlers never imported studio"
    for name, path in result["studio_modules"].items():
        assert path is None or Path(path).resolve().is_relative_to(code_dir.resolve()), (name, path)
    assert not any(str(REPO) in (p or "") for p in result["studio_modules"].values())
