"""model.tar.gz as the SageMaker PyTorch inference toolkit expects it, and the container's environment.

Layout: code/inference.py (= studio/serving/toolkit.py, the toolkit's handlers), code/requirements.txt (installed
by the DLC at start; GPU packages leave out openvino, the CPU engine), code/wheels/ when the plan vendors its wheels
(then requirements.txt installs them with no index: see studio.deploy.wheels), code/studio/ (our package without
studio/testing), the model files at the archive root
when the model is local (a diffusers folder's contents, or the single checkpoint file), and the plan's LoRA and VAE
files in Lora/ and VAE/ (A1111's folder names). The container's STUDIO_MODELS_DIR is /opt/ml/model, so the
engine finds those folders where SageMaker unpacks the archive (studio.models.model_in_dir looks past them for the
model). A hub-id model is not packaged: the container gets its id through STUDIO_MODEL (see `model_environment`).
An s3:// archive is used as is and never packaged here.
"""

from __future__ import annotations

import io
import logging
import os
import re
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

from studio.config import SAGEMAKER_MODEL_DIR
from studio.deploy.plan import DeployError, DeployPlan
from studio.deploy.wheels import WHEELS_DIR, WheelTarget, cached_wheels, offline_requirements, pinned_closure
from studio.models import ModelKind

log = logging.getLogger(__name__)

STUDIO_ROOT = Path(__file__).resolve().parents[1]
TOOLKIT = STUDIO_ROOT / "serving" / "toolkit.py"
# Folders of the studio package that never go into the container (test support).
EXCLUDED_FOLDERS = frozenset({"testing"})
# The environment variable the serving entry points read for a hub model id (no model files in the tar).
MODEL_ENV_VAR = "STUDIO_MODEL"
# Where the serving engine looks for Lora/, VAE/ and ESRGAN/: the unpacked archive.
MODELS_DIR_ENV_VAR = "STUDIO_MODELS_DIR"
# Top-level names of the archive that belong to the package itself, not to a model folder's contents.
_RESERVED = ("code", "Lora", "VAE")

# Runtime requirements the PyTorch DLC lacks. torch (and torchvision/torchaudio) come with the DLC and must not be
# reinstalled; gradio is studio-only. openai-clip stays: it carries the CLIP BPE vocabulary that single-file
# checkpoints need to build their tokenizer offline. Used when the repo's requirements.txt is not next to the package.
_CONTAINER_EXCLUDE = {"torch", "torchvision", "torchaudio", "gradio", "gradio-client", "playwright"}
# The CPU fast path (--engine openvino, and NNCF for its int8 weights): a GPU endpoint never uses it (~180 MB of
# wheels and install time; NNCF adds scikit-learn, scipy and ninja to the closure).
_CPU_ONLY = {"openvino", "openvino-telemetry", "nncf"}
_FALLBACK_REQUIREMENTS = [
    "diffusers==0.42.1",
    "transformers==5.23.0",
    "accelerate==1.15.0",
    "safetensors==0.8.0",
    "Pillow==12.3.0",
    "numpy==2.4.6",
    "scipy==1.17.1",
    "torchsde==0.2.6",
    "boto3==1.44.5",
    "openai-clip==1.0.1",
]


def container_requirements(*, gpu: bool = True) -> list[str]:
    """code/requirements.txt: the repo's runtime requirements minus what the DLC has (torch) or never needs (UI;
    on a GPU, openvino)."""
    excluded = _CONTAINER_EXCLUDE | (_CPU_ONLY if gpu else set())
    req_file = STUDIO_ROOT.parent / "requirements.txt"
    if not req_file.is_file():
        return list(_FALLBACK_REQUIREMENTS)
    lines = []
    for raw in req_file.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name = re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].strip().lower().replace("_", "-")
        if name not in excluded:
            lines.append(line)
    return lines


def _package_files() -> Iterator[tuple[Path, str]]:
    """(file, arcname) for the studio package: .py files and configs only, no caches, no test support."""
    for path in sorted(STUDIO_ROOT.rglob("*")):
        rel = path.relative_to(STUDIO_ROOT)
        if not path.is_file() or "__pycache__" in rel.parts or rel.parts[0] in EXCLUDED_FOLDERS:
            continue
        if path.suffix == ".py" or (rel.parts[0] == "configs" and path.suffix in (".json", ".txt", ".yaml")):
            yield path, f"code/studio/{rel.as_posix()}"


def _add_bytes(tar: tarfile.TarFile, arcname: str, data: bytes) -> None:
    info = tarfile.TarInfo(arcname)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _local_model_path(plan: DeployPlan) -> Path | None:
    """The files that go into the archive for `plan`'s model (None: a hub id or an s3:// archive)."""
    if plan.model_kind is ModelKind.DEMO:
        from studio.models import demo_model_dir

        return Path(demo_model_dir())
    if plan.model_kind in (ModelKind.DIFFUSERS, ModelKind.SINGLE_FILE):
        return Path(plan.model).expanduser().resolve()
    return None


def _add_model(tar: tarfile.TarFile, model_path: Path) -> None:
    """The model's files at the archive root, as /opt/ml/model/ will hold them (hidden files skipped)."""
    if not model_path.is_dir():
        tar.add(model_path, arcname=model_path.name)
        return
    for path in sorted(model_path.rglob("*")):
        rel = path.relative_to(model_path)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            if rel.parts[0] in _RESERVED:
                raise DeployError("package", f"{model_path} has a {rel.parts[0]}/ folder, which would clash")
            tar.add(path, arcname=rel.as_posix())


def package_model(plan: DeployPlan, out_path: str | os.PathLike[str]) -> Path:
    """Write model.tar.gz for `plan` (layout in the module docstring); returns the path."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not TOOLKIT.is_file():
        raise DeployError("package", f"{TOOLKIT} is missing; the container entry point cannot be packaged")
    model_path = _local_model_path(plan)
    extras = plan.extra_files()  # PlanError naming --lora/--vae before anything is written
    requirements = container_requirements(gpu=plan.gpu)
    wheels: list[Path] = []
    if plan.vendors_wheels:
        target = WheelTarget(plan.wheels_python)
        pins = pinned_closure(requirements, target)
        wheels = cached_wheels(pins, target)  # downloaded once per set of pins, into the studio's cache folder
        requirements_text = offline_requirements(pins)
        log.info("vendoring %d wheels (%.1f MB)", len(wheels), sum(w.stat().st_size for w in wheels) / 1e6)
    else:
        requirements_text = "\n".join(requirements) + "\n"
    _write_archive(out, plan, model_path, extras, requirements_text, wheels)
    log.info("packaged %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return out


def _write_archive(
    out: Path,
    plan: DeployPlan,
    model_path: Path | None,
    extras: list[tuple[Path, str]],
    requirements_text: str,
    wheels: list[Path],
) -> None:
    # compresslevel 1: weights barely compress and level 9 takes minutes on multi-GB checkpoints.
    with tarfile.open(out, "w:gz", compresslevel=1) as tar:
        tar.add(TOOLKIT, arcname="code/inference.py")
        _add_bytes(tar, "code/requirements.txt", requirements_text.encode())
        for wheel in wheels:
            tar.add(wheel, arcname=f"code/{WHEELS_DIR}/{wheel.name}")
        for path, arcname in _package_files():
            tar.add(path, arcname=arcname)
        if model_path is not None:
            _add_model(tar, model_path)
        for path, arcname in extras:
            tar.add(path, arcname=arcname)
            log.info("packaged %s as %s", path, arcname)


def model_environment(plan: DeployPlan) -> dict[str, str]:
    """Container environment: the inference toolkit's settings, timeouts, the models folder (the unpacked archive,
    for Lora/, VAE/ and ESRGAN/), and the hub id when not packaged."""
    timeout = "3600" if plan.mode == "async" else "120"
    env = {
        "SAGEMAKER_PROGRAM": "inference.py",
        "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
        "SAGEMAKER_CONTAINER_LOG_LEVEL": "20",
        "SAGEMAKER_REGION": plan.region or "",
        "SAGEMAKER_MODEL_SERVER_WORKERS": "1",  # one copy of the pipeline per GPU instance
        "SAGEMAKER_MODEL_SERVER_TIMEOUT": timeout,
        "SAGEMAKER_TS_RESPONSE_TIMEOUT": timeout,
        "TS_MAX_REQUEST_SIZE": str(1_000_000_000 if plan.mode == "async" else 6_291_456),
        "TS_MAX_RESPONSE_SIZE": str(1_000_000_000 if plan.mode == "async" else 6_291_456),
        MODELS_DIR_ENV_VAR: str(SAGEMAKER_MODEL_DIR),
        # The DLC pip-installs code/requirements.txt at every cold start; byte-compiling all of transformers and
        # diffusers there is most of that time, and Python compiles what it imports anyway (bench: dlc_cold_start).
        "PIP_NO_COMPILE": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    if plan.model_kind is ModelKind.HUB:
        env[MODEL_ENV_VAR] = plan.model
    env.update(plan.env)
    return env
