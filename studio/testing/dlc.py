"""The SageMaker PyTorch DLC's serving stack on this machine, for the stack test and the bench (never the product).

The DLC runs `serve` = sagemaker_pytorch_serving_container.serving.main(): it pip-installs code/requirements.txt,
writes /etc/sagemaker-ts.properties and starts TorchServe (Java 17), whose Python worker imports code/inference.py
(studio.serving.toolkit). Here the same packages (requirements-dlc.txt: the toolkit, TorchServe, setuptools with
pkg_resources, torch) live in a *base* venv, built once into the cache folder and shared — the DLC image. Each run
gets a *thin* venv that sees the base through a .pth file and starts empty, like a fresh container: the package's
requirements are installed into it at start, exactly as on an endpoint.

Everything listens on 127.0.0.1 free ports (TorchServe's inference, management, metrics and gRPC addresses are set
through its TS_* variables); pip gets no configuration files, so `PIP_NO_INDEX=1` really means no index. `serve`
runs in its own PID namespace where `unshare` allows it (root), like in a container: the toolkit refuses to start
when it sees another TorchServe among the machine's processes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from studio.testing.servers import REPO, free_port

REQUIREMENTS = REPO / "requirements-dlc.txt"
SERVE_CODE = "from sagemaker_pytorch_serving_container import serving; serving.main()"


def java_available() -> bool:
    try:
        return subprocess.run(["java", "-version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@functools.cache
def _unshare() -> list[str]:
    """`unshare` into a new PID namespace (as root), so `serve` sees only its own processes, as in a container: the
    toolkit looks for *the* TorchServe among all processes and refuses to run beside another one on the machine."""
    command = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
    try:
        ok = subprocess.run([*command, "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return command if ok else []


def _site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def _clean_pip_env(**extra: str) -> dict[str, str]:
    """The environment without pip configuration (files or PIP_* variables) plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)
    return env


def base_venv(cache: Path) -> Path:
    """The venv standing in for the DLC image (requirements-dlc.txt, numpy/scipy at our pins), built once."""
    from studio.fs import file_lock

    digest = hashlib.sha256(REQUIREMENTS.read_bytes() + (REPO / "requirements.txt").read_bytes()).hexdigest()[:12]
    venv = cache / f"dlc-base-{digest}"
    ready = venv / ".ready"
    cache.mkdir(parents=True, exist_ok=True)
    with file_lock(cache / f"dlc-base-{digest}.lock"):
        if ready.exists():
            return venv
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
        python = str(venv / "bin" / "python")
        # The machine's own pip configuration (its wheel folders and mirrors) is what makes torch install here.
        subprocess.run(
            [python, "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS), "-c", str(REPO / "requirements.txt")],
            check=True,
            timeout=1200,
        )
        ready.write_text("ok\n")
    return venv


def thin_venv(base: Path, dest: Path) -> Path:
    """A fresh venv that sees `base` (the image) and holds nothing of its own yet (a new container)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(dest)], check=True, timeout=120)
    (_site_packages(dest) / "dlc-image.pth").write_text(str(_site_packages(base)) + "\n")
    # `torchserve` starts its Python workers with its own interpreter: this venv's, as in the one-venv DLC.
    script = dest / "bin" / "torchserve"
    code = "import sys\nfrom ts.model_server import start\nsys.exit(start())\n"
    script.write_text(f"#!{dest / 'bin' / 'python'}\n{code}")
    script.chmod(0o755)
    return dest


def unpack(tarball: Path, base_dir: Path) -> Path:
    """model.tar.gz unpacked as SageMaker does: SAGEMAKER_BASE_DIR/model/."""
    model = base_dir / "model"
    model.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(model, filter="data")
    return model


class DlcServer:
    """`serve` of the PyTorch DLC's stack in `venv` on a model folder; a context manager that stops it."""

    def __init__(self, venv: Path, base_dir: Path, *, env: dict[str, str] | None = None, log: Path | None = None):
        self.venv, self.base_dir = venv, base_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        ports = {name: free_port() for name in ("management", "metrics", "grpc_inference", "grpc_management")}
        self.env = _clean_pip_env(
            SAGEMAKER_BASE_DIR=str(base_dir),
            SAGEMAKER_BIND_TO_PORT=str(self.port),
            SAGEMAKER_PROGRAM="inference.py",
            SAGEMAKER_MODEL_SERVER_WORKERS="1",
            SAGEMAKER_MODEL_SERVER_TIMEOUT="300",
            TS_INFERENCE_ADDRESS=self.url,
            TS_MANAGEMENT_ADDRESS=f"http://127.0.0.1:{ports['management']}",
            TS_METRICS_ADDRESS=f"http://127.0.0.1:{ports['metrics']}",
            TS_GRPC_INFERENCE_ADDRESS="127.0.0.1",
            TS_GRPC_MANAGEMENT_ADDRESS="127.0.0.1",
            TS_GRPC_INFERENCE_PORT=str(ports["grpc_inference"]),
            TS_GRPC_MANAGEMENT_PORT=str(ports["grpc_management"]),
            TS_DISABLE_SYSTEM_METRICS="true",
            HF_HUB_OFFLINE="1",
            OMP_NUM_THREADS="1",
            PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            **(env or {}),
        )
        self.env.pop("PYTHONPATH", None)
        # TorchServe keeps its pid file in the temp folder and refuses to start beside another instance there.
        (base_dir / "tmp").mkdir(parents=True, exist_ok=True)
        self.env["TMPDIR"] = str(base_dir / "tmp")
        self.log = log or base_dir / "serve.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def start(self) -> DlcServer:
        self.started = time.monotonic()
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [*_unshare(), str(self.venv / "bin" / "python"), "-c", SERVE_CODE],
                cwd=self.base_dir,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # TorchServe's Java and Python workers go in this group, stopped together
            )
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ping(self, timeout: float) -> float:
        """Seconds from start until /ping answers 200; RuntimeError when `serve` exits or time runs out."""
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"serve exited ({self.process.returncode}):\n{self.output()[-4000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/ping", timeout=2).status_code == 200:
                    return time.monotonic() - self.started
            time.sleep(0.2)
        raise RuntimeError(f"/ping did not answer 200 within {timeout:.0f} s:\n{self.output()[-4000:]}")

    def invoke(self, payload: Any, *, headers: dict[str, str] | None = None, timeout: float = 300) -> Any:
        import json

        import requests

        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        sent = {"Content-Type": "application/json", **(headers or {})}
        return requests.post(f"{self.url}/invocations", data=data, headers=sent, timeout=timeout)

    def wait_first_image(self, payload: dict[str, Any], timeout: float) -> float:
        """Seconds from start until /invocations answers 200 (the model loads in the worker after /ping)."""
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"serve exited ({self.process.returncode}):\n{self.output()[-4000:]}")
            with contextlib.suppress(requests.RequestException):
                if self.invoke(payload, timeout=max(5.0, deadline - time.monotonic())).status_code == 200:
                    return time.monotonic() - self.started
            time.sleep(0.5)
        raise RuntimeError(f"no image within {timeout:.0f} s:\n{self.output()[-4000:]}")

    def wait_exit(self, timeout: float) -> int | None:
        """The exit code once `serve` ends within `timeout` seconds, else None."""
        try:
            return self.process.wait(timeout=timeout) if self.process else None
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        # TorchServe's Java frontend leaves its process group when it daemonizes: stop any of ours still running.
        _stop_frontends(self.base_dir)

    def __enter__(self) -> DlcServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _stop_frontends(base_dir: Path) -> None:
    """SIGTERM TorchServe frontends whose working folder is `base_dir` (ours; never another one)."""
    import psutil

    for process in psutil.process_iter(["cmdline", "cwd"]):
        try:
            cmdline = process.info.get("cmdline") or []
            if "org.pytorch.serve.ModelServer" in cmdline and process.info.get("cwd") == str(base_dir):
                process.terminate()
                process.wait(timeout=20)
        except (psutil.Error, OSError):
            continue


@contextlib.contextmanager
def served(venv: Path, base_dir: Path, **kwargs: Any) -> Iterator[DlcServer]:
    server = DlcServer(venv, base_dir, **kwargs).start()
    try:
        yield server
    finally:
        server.stop()
