"""Vendored wheels: the packages the container needs, inside model.tar.gz, installable with no index.

The PyTorch DLC pip-installs code/requirements.txt at every cold start (and every scale-out). From PyPI that takes
~30 s and fails outright without internet (network isolation, a VPC without NAT). A vendored package carries the
wheels in code/wheels/ and a requirements file that starts with `--no-index --find-links wheels` (pip reads a
relative find-links path relative to the requirements file), so the start needs no network at all.

Which wheels: the container requirements and everything they depend on, at the versions installed here (the
versions the studio is tested with), minus what the DLC image already has (torch and its CUDA stack). Markers are
evaluated for the container's Python, and wheels are downloaded for its Python and platform (the DLC: CPython 3.12
on manylinux x86_64) with `pip download --no-deps`; the one package that ships only a source archive (openai-clip,
pure Python) is built into a py3-none-any wheel here.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from studio.deploy.plan import DLC_PYTHON, DeployError

log = logging.getLogger(__name__)

# pip does not widen manylinux_2_X tags to older glibc versions by itself: list the ones the DLC (glibc 2.35) runs.
DLC_PLATFORMS = (*(f"manylinux_2_{minor}_x86_64" for minor in range(35, 16, -1)), "manylinux2014_x86_64")
# What the DLC image provides and a package must not reinstall (torch's own dependencies are followed only from
# torch, so they stay out unless another package needs them too).
PROVIDED = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*|pytorch-triton.*)$")
WHEELS_DIR = "wheels"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class WheelTarget:
    """The interpreter and platform the wheels are for."""

    python_version: str = DLC_PYTHON  # "3.12"
    platforms: tuple[str, ...] = DLC_PLATFORMS

    @classmethod
    def this_interpreter(cls) -> WheelTarget:
        """This Python (the local DLC stack test runs the package here), on manylinux x86_64 like the DLC."""
        return cls(f"{sys.version_info.major}.{sys.version_info.minor}")

    def marker_environment(self) -> dict[str, str]:
        return {
            "python_version": self.python_version,
            "python_full_version": f"{self.python_version}.0",
            "implementation_name": "cpython",
            "platform_python_implementation": "CPython",
            "sys_platform": "linux",
            "platform_system": "Linux",
            "platform_machine": "x86_64",
            "os_name": "posix",
        }


def pinned_closure(requirements: list[str], target: WheelTarget) -> list[str]:
    """`name==version` for the requirements and their dependencies (markers for `target`), from what is installed
    here, minus PROVIDED. A dependency not installed here (only the target needs it) keeps its specifier."""
    from packaging.requirements import Requirement

    environment = target.marker_environment()
    pins: dict[str, str] = {}
    pending = [(Requirement(line), "") for line in requirements]
    while pending:
        requirement, extra = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({**environment, "extra": extra}):
            continue
        name = canonical(requirement.name)
        if PROVIDED.match(name) or name in pins:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            log.warning("%s is not installed here; vendoring it as %s", name, requirement)
            pins[name] = str(requirement).split(";")[0].strip()
            continue
        pins[name] = f"{name}=={dist.version}"
        for line in dist.requires or []:
            dependency = Requirement(line)
            for wanted in ("", *sorted(requirement.extras)):
                pending.append((dependency, wanted))
    return sorted(pins.values())


def cached_wheels(pins: list[str], target: WheelTarget) -> list[Path]:
    """The wheels for `pins` and `target`, downloaded once into the studio's cache folder (wheels-<key>/)."""
    import hashlib

    from studio.config import cache_dir
    from studio.fs import file_lock, staged_dir

    key = hashlib.sha256(json.dumps([pins, target.python_version, list(target.platforms)]).encode()).hexdigest()
    folder = cache_dir() / f"wheels-{key[:16]}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(folder.parent / f"{folder.name}.lock"):
        if not folder.is_dir():
            with staged_dir(folder) as staging:
                download_wheels(pins, staging, target)
    return sorted(folder.glob("*.whl"))


def download_wheels(pins: list[str], dest: Path, target: WheelTarget, *, timeout: float = 900) -> list[Path]:
    """`pip download` each pin for `target` into `dest`: binary wheels for its Python and platform; a package that
    publishes only a source archive (openai-clip) is built here into a wheel, which must then be pure Python
    (`py3-none-any`). DeployError naming what failed."""
    dest.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(dest)]
    command += ["--python-version", target.python_version, "--implementation", "cp"]
    for platform in target.platforms:
        command += ["--platform", platform]
    log.info("downloading %d wheels for Python %s into %s", len(pins), target.python_version, dest)
    _pip([*command, *pins], timeout, f"could not download the wheels for Python {target.python_version}")
    for archive in [*dest.glob("*.tar.gz"), *dest.glob("*.zip")]:
        _pip(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(dest), str(archive)],
            timeout,
            f"could not build a wheel from {archive.name}",
        )
        archive.unlink()
    wheels = sorted(dest.glob("*.whl"))
    for wheel in wheels:
        if not for_python(wheel.name, target.python_version):
            raise DeployError("package", f"{wheel.name} is not for Python {target.python_version}")
    return wheels


def for_python(wheel_name: str, python_version: str) -> bool:
    """True when one of the wheel's tags runs on CPython `python_version` ("3.12"): its own cp312 build, the stable
    ABI (abi3) from an older CPython 3, or any Python 3 without an ABI (py3-none-any, and py3-none-<platform> such as
    ninja's binary wheels). The platform is pip's to choose (`--platform`)."""
    from packaging.utils import parse_wheel_filename

    minor = int(python_version.split(".")[1])
    for tag in parse_wheel_filename(wheel_name)[3]:
        if tag.interpreter in ("py3", f"py3{minor}") and tag.abi == "none":
            return True
        if tag.interpreter == f"cp3{minor}" and tag.abi in (f"cp3{minor}", "abi3", "none"):
            return True
        if tag.abi == "abi3" and re.fullmatch(r"cp3\d+", tag.interpreter) and int(tag.interpreter[3:]) <= minor:
            return True
    return False


def _pip(command: list[str], timeout: float, what: str) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DeployError("package", f"{what}: pip did not finish within {timeout:.0f} s") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if "ERROR" in line] or done.stderr.splitlines()[-5:]
        raise DeployError(
            "package",
            f"{what} ({'; '.join(lines)[:800]}); vendoring needs the package index once, here (the endpoint then "
            "needs none)",
        )


def offline_requirements(pins: list[str]) -> str:
    """code/requirements.txt of a vendored package: no index, the wheels beside it, the exact versions."""
    header = [
        "# Vendored: every wheel is in code/wheels/; nothing is fetched from an index.",
        "--no-index",
        f"--find-links {WHEELS_DIR}",
    ]
    return "\n".join([*header, *pins]) + "\n"
