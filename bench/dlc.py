"""Bench for the DLC path (`deploy create` with the PyTorch DLC + model.tar.gz): what a cold start costs.

- `dlc_cold_start` (worker task, a fresh process): the demo model packaged twice (plain requirements, and with
  vendored wheels) and started, as an endpoint starts, by the DLC's serving stack (studio.testing.dlc: the toolkit,
  TorchServe 0.12, Java 17) in a fresh environment each time, three ways:
  - `vendored`: code/wheels/ with PIP_NO_INDEX=1 (no network at all);
  - `warm_cache`: the plain requirements from the package index, with pip's cache already holding every wheel
    (the best case for an index install; SageMaker containers start with an empty cache);
  - `index`: the plain requirements from the package index (PyPI) with no cache — what every cold start,
    scale-out and async scale-from-zero does today. Needs the internet: `{skipped: reason}` when it fails.
  Each: `install_s` (serve start until TorchServe is launched: the pip install), `ping_s` (until /ping 200),
  `first_image_s` (until the first 64x64 image: the worker imports torch/diffusers and loads the model).
  Plus the package sizes and `pip_no_compile` (the DLC environment sets PIP_NO_COMPILE=1).
- `dlc_section` (bench section `dlc`): runs the task; `{skipped}` without Java.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

REQUEST = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2, "seed": 7}
LAUNCH_MARK = "'torchserve', '--start'"  # the toolkit prints the command once the requirements are installed


def _install_seconds(server: Any, timeout: float) -> float | None:
    """Seconds from start until the toolkit launches TorchServe (its pip install is done), read from the log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.alive():
        if LAUNCH_MARK in server.output():
            return time.monotonic() - server.started
        time.sleep(0.1)
    return None


def _start(dlc: Any, base: Path, tarball: Path, work: Path, env: dict[str, str], timeout: float) -> dict[str, Any]:
    """One cold start in a fresh environment: install, /ping, first image (seconds from `serve`)."""
    venv = dlc.thin_venv(base, work / "venv")
    dlc.unpack(tarball, work / "endpoint")
    with dlc.served(venv, work / "endpoint", env=env) as server:
        try:
            install = _install_seconds(server, timeout)
            ping = server.wait_ping(timeout)
            image = server.wait_first_image(REQUEST, timeout)
        except RuntimeError as exc:
            return {"skipped": str(exc).splitlines()[0], "log_tail": server.output()[-1500:]}
    return {"install_s": round(install or 0.0, 1), "ping_s": round(ping, 1), "first_image_s": round(image, 1)}


def dlc_cold_start(timeout: float = 900.0, index: bool = True) -> dict[str, Any]:
    """Worker task: cold-start seconds of the DLC path (see the module docstring)."""
    from studio.config import cache_dir
    from studio.deploy import DeployPlan, package_model
    from studio.testing import dlc

    cache = cache_dir()
    started = time.perf_counter()
    base = dlc.base_venv(cache)
    result: dict[str, Any] = {"base_venv_s": round(time.perf_counter() - started, 1), "pip_no_compile": True}
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    common = {"STUDIO_CACHE": str(cache), "PIP_NO_COMPILE": "1"}
    with tempfile.TemporaryDirectory(prefix="bench-dlc-") as tmp:
        root = Path(tmp)
        vendored = package_model(
            DeployPlan(name="b", model="demo", vendor_wheels=True, wheels_python=python), root / "v.tgz"
        )
        plain = package_model(DeployPlan(name="b", model="demo"), root / "p.tgz")
        result["package_mb"] = {
            "vendored": round(vendored.stat().st_size / 1e6, 1),
            "plain": round(plain.stat().st_size / 1e6, 1),
        }
        result["vendored"] = _start(dlc, base, vendored, root / "vendored", {**common, "PIP_NO_INDEX": "1"}, timeout)
        pip_cache = root / "pip-cache"
        requirements = root / "requirements.txt"
        with tarfile.open(plain) as tar:
            requirements.write_bytes(tar.extractfile("code/requirements.txt").read())
        if not index:
            result["warm_cache"] = result["index"] = {"skipped": "index runs not asked for (index=False)"}
            return result
        primed = subprocess.run(  # fills pip's cache with every wheel: the warm case then downloads nothing
            [
                str(base / "bin" / "python"),
                "-m",
                "pip",
                "download",
                "-q",
                "-d",
                str(root / "dl"),
                "-r",
                str(requirements),
            ],
            env=dlc._clean_pip_env(PIP_CACHE_DIR=str(pip_cache)),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if primed.returncode != 0:
            reason = f"no package index reachable: {(primed.stderr.strip().splitlines() or ['?'])[-1][:300]}"
            result["warm_cache"] = result["index"] = {"skipped": reason}
            return result
        shutil.rmtree(root / "dl", ignore_errors=True)
        result["warm_cache"] = _start(
            dlc, base, plain, root / "warm", {**common, "PIP_CACHE_DIR": str(pip_cache)}, timeout
        )
        result["index"] = _start(dlc, base, plain, root / "index", {**common, "PIP_NO_CACHE_DIR": "1"}, timeout)
    return result


def dlc_section(ctx: Any) -> dict[str, Any]:
    """DLC cold start (demo model): install/ping/first-image seconds with vendored wheels, a warm cache, the index."""
    from studio.testing.dlc import java_available

    if not java_available():
        return {"skipped": "TorchServe needs Java 17 (apt-get install openjdk-17-jre-headless)"}
    return ctx.worker("dlc_cold_start")
