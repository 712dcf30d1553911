"""Dockerfile.lambda without Docker (it cannot be built here), piece by piece as the SageMaker Dockerfile is tested:
its pins match the project, its build context holds what it copies, its model export command works, and what the
image runs — `python -m awslambdaric studio.serving.aws_lambda.handler` from the installed package, with the image's
environment and without the packages the image leaves out — answers Lambda's Runtime API like Lambda would drive it
(the engine loaded once, at init, from the prepared IR)."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from studio.testing.lambda_runtime import FunctionError, RuntimeAPI
from studio.testing.servers import REPO, SINGLE_THREAD_ENV

DOCKERFILE = (REPO / "Dockerfile.lambda").read_text()
LEFT_OUT = ("gradio", "gradio_client", "fastapi", "uvicorn")  # what the image does not install (see its grep -v)
# A sitecustomize that makes those imports fail, as they would in the image.
BLOCKER = """
import importlib.abc, sys
class _LeftOut(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {left_out}:
            raise ImportError(f"{{name}} is not installed in the Lambda image")
sys.meta_path.insert(0, _LeftOut())
"""


def pin(text: str, package: str) -> str:
    return re.search(rf"^{re.escape(package)}(?:\[[^\]]*\])?==(\S+)", text, re.M).group(1)


def image_env() -> dict[str, str]:
    """The ENV block of Dockerfile.lambda."""
    block = re.search(r"^ENV ((?:.*\\\n)*.*)$", DOCKERFILE, re.M).group(1)
    return dict(re.findall(r"(\w+)=(\S+)", block.replace("\\\n", " ")))


def ignored_by(patterns: list[str], rel: str) -> bool:
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(p, pattern) for p in prefixes for pattern in patterns)


def lambda_context(tmp_path: Path) -> Path:
    """What Dockerfile.lambda's COPY lines take, minus Dockerfile.lambda.dockerignore, in a fresh build context."""
    ignore = (REPO / "Dockerfile.lambda.dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in ignore if line.strip() and not line.startswith("#")]
    context = tmp_path / "context"
    context.mkdir()
    for line in DOCKERFILE.splitlines():
        if not line.startswith("COPY "):
            continue
        for source in line.split()[1:-1]:
            assert not ignored_by(patterns, source), f"{source} is copied but excluded by the .dockerignore"
            path = REPO / source
            for file in [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]:
                rel = file.relative_to(REPO).as_posix()
                if not ignored_by(patterns, rel):
                    (context / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(file, context / rel)
    return context


def test_dockerfile_lambda_matches_the_project():
    requirements = (REPO / "requirements.txt").read_text()
    assert re.search(r"^FROM public\.ecr\.aws/lambda/python:\$\{PYTHON_VERSION\}$", DOCKERFILE, re.M)
    assert f"ARG TORCH_VERSION={pin(requirements, 'torch')}" in DOCKERFILE
    assert "download.pytorch.org/whl/cpu" in DOCKERFILE  # the CPU torch, not PyPI's CUDA build
    assert f"ARG AWSLAMBDARIC_VERSION={pin((REPO / 'requirements-dev.txt').read_text(), 'awslambdaric')}" in DOCKERFILE
    assert "openvino==" in requirements and "openvino" not in "|".join(LEFT_OUT)
    exclusion = re.search(r"grep -v -E '\^\((.*)\)=='", DOCKERFILE).group(1).split("|")
    assert tuple(exclusion) == LEFT_OUT and all(f"\n{name}==" in "\n" + requirements for name in exclusion)
    assert re.search(r'^ENTRYPOINT \["python3", "-m", "awslambdaric"\]$', DOCKERFILE, re.M)
    handler = re.search(r'^CMD \["([\w.]+)"\]$', DOCKERFILE, re.M).group(1)
    assert handler == "studio.serving.aws_lambda.handler"
    env = image_env()
    assert env["STUDIO_ENGINE"] == "openvino" and env["HF_HUB_OFFLINE"] == "1"
    for writable in ("STUDIO_CACHE", "HF_HOME", "XDG_CACHE_HOME"):  # only /tmp is writable on Lambda
        assert env[writable].startswith("/tmp/")
    assert "python -m studio.models export-openvino" in DOCKERFILE and "--mount=type=bind" in DOCKERFILE


def test_the_handler_module_is_light_to_import():
    check = (
        "import sys, studio.serving.aws_lambda as m; "
        "heavy = [n for n in ('torch', 'diffusers', 'openvino', 'boto3', 'fastapi', 'gradio') if n in sys.modules]; "
        "assert not heavy, heavy; assert callable(m.handler)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("AWS_LAMBDA_RUNTIME_API", None)
    out = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr


@pytest.mark.slow
def test_the_image_runs_the_handler_under_the_runtime_api(tmp_path):
    """Install the build context, export the model with the Dockerfile's command, then run the image's entry point
    against a local Runtime API: a function URL event and a direct invocation, the engine loaded once at init."""
    context = lambda_context(tmp_path)
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site)]
    subprocess.run([*pip, str(context)], check=True, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER.format(left_out=set(LEFT_OUT)))

    env = {k: v for k, v in os.environ.items() if not k.startswith(("STUDIO_", "AWS_LAMBDA"))}
    env.update(image_env(), **SINGLE_THREAD_ENV, PYTHONPATH=f"{blocker}{os.pathsep}{site}")
    env.update(STUDIO_CACHE=str(tmp_path / "tmp" / "sd-studio"), HF_HOME=str(tmp_path / "tmp" / "hf-home"))
    env.update(XDG_CACHE_HOME=str(tmp_path / "tmp" / "xdg"), STUDIO_MODEL=str(tmp_path / "model"))
    export = [sys.executable, "-m", "studio.models", "export-openvino", "demo", env["STUDIO_MODEL"]]
    # The Dockerfile's export, with the repo's IR cache so the demo's IR is not converted again here.
    done = subprocess.run(
        [*export, "--precision", "bf16", "--models-dir", "models"],
        cwd=context,
        env={**env, "STUDIO_CACHE": os.environ.get("STUDIO_CACHE", str(REPO / ".cache"))},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    where = "import studio.serving.aws_lambda as m; print(m.__file__)"
    out = subprocess.run([sys.executable, "-c", where], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0 and Path(out.stdout.strip()).is_relative_to(site), out.stderr  # the installed copy

    log = tmp_path / "function.log"
    with RuntimeAPI() as runtime, open(log, "wb") as sink:
        env["AWS_LAMBDA_RUNTIME_API"] = runtime.address
        command = [sys.executable, "-m", "awslambdaric", "studio.serving.aws_lambda.handler"]
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=sink, stderr=subprocess.STDOUT)
        try:
            assert runtime.first_poll.wait(240), log.read_text()[-3000:]
            assert runtime.init_error is None, runtime.init_error
            url_event = {
                "version": "2.0",
                "rawPath": "/",
                "headers": {"content-type": "application/json"},
                "requestContext": {"http": {"method": "POST", "path": "/"}},
                "body": '{"prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64, "seed": 9}',
                "isBase64Encoded": False,
            }
            response = runtime.invoke(url_event)
            assert response["statusCode"] == 200 and '"seeds": [9]' in response["body"]
            direct = runtime.invoke({"inputs": "a cat", "parameters": {"num_inference_steps": 2, "width": 64}})
            assert len(direct["generated_images"]) == 1 and direct["dialect"] == "hf_dlc"
            bad = runtime.invoke({"prompt": "a cat", "steps": 0})
            assert bad["statusCode"] == 400 and bad["field"] == "steps"
            with pytest.raises(FunctionError):  # not JSON at all: Lambda's own unmarshal error
                runtime.invoke_raw(b"{not json")
        finally:
            process.terminate()
            process.wait(timeout=20)
    text = log.read_text()
    assert text.count("model loaded in") == 1, text[-3000:]  # once per execution environment
    assert "(prepared)" in text and "converting" not in text  # the cold start compiled the IR, converted nothing
    assert "OpenVINO precision" in text
    assert not (tmp_path / "tmp" / "sd-studio" / "openvino").exists()
