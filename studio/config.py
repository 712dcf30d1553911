"""Typed settings, parsed once from command-line flags and STUDIO_* environment variables.

Precedence: flag > STUDIO_* env > default. Env strings are parsed explicitly: "false"/"0"/"no" are
false, numbers must be numbers (a bad value is an error naming the variable, never a silent default).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from studio.types import Limits

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ValueError):
    """A flag or STUDIO_* variable has a value that cannot be used."""


def parse_bool(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}: expected true/false, got {text!r}")


def parse_int(name: str, text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ConfigError(f"{name}: expected a whole number, got {text!r}") from None


@dataclass(frozen=True)
class Settings:
    """Everything app.py needs to build the engine and the UI."""

    model: str | None = None  # None: first model in models_dir, else the demo
    inpaint_model: str | None = None
    models_dir: Path = Path("models")
    outputs: Path = Path("outputs")
    host: str = "127.0.0.1"
    port: int = 7860
    device: str = "auto"  # auto | cuda | cpu
    engine: str = "torch"  # torch | openvino (CPU fast path)
    openvino_precision: str = "bf16"  # bf16 (fast on CPUs with native bf16) | f32 (exact)
    backend: str = "local"  # local | sagemaker | http
    url: str | None = None  # --backend http
    endpoint: str | None = None  # --backend sagemaker
    auth: str | None = None  # "user:password" or a path to a file of such lines
    no_auth: bool = False
    share: bool = False
    limits: Limits = field(default_factory=Limits)

    def validate(self) -> Settings:
        if self.device not in ("auto", "cuda", "cpu"):
            raise ConfigError(f"--device: expected auto, cuda or cpu, got {self.device!r}")
        if self.engine not in ("torch", "openvino"):
            raise ConfigError(f"--engine: expected torch or openvino, got {self.engine!r}")
        if self.openvino_precision not in ("bf16", "f32"):
            raise ConfigError(f"--openvino-precision: expected bf16 or f32, got {self.openvino_precision!r}")
        if self.backend not in ("local", "sagemaker", "http"):
            raise ConfigError(f"--backend: expected local, sagemaker or http, got {self.backend!r}")
        if self.backend == "http" and not self.url:
            raise ConfigError("--backend http needs --url (the address of a running `python -m studio.serving`)")
        if self.backend == "sagemaker" and not self.endpoint:
            raise ConfigError("--backend sagemaker needs --endpoint NAME")
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port: expected 1-65535, got {self.port}")
        return self


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="app.py", description="SD Studio: a Stable Diffusion studio in your browser.")
    p.add_argument("--model", help="diffusers folder, .safetensors/.ckpt file, hub id, or 'demo' (STUDIO_MODEL)")
    p.add_argument("--inpaint-model", help="dedicated inpainting checkpoint (9-channel UNet) (STUDIO_INPAINT_MODEL)")
    p.add_argument("--models-dir", help="drop-in folder scanned for models (STUDIO_MODELS_DIR, default ./models)")
    p.add_argument("--outputs", help="where images and history are saved (STUDIO_OUTPUTS, default ./outputs)")
    p.add_argument("--host", help="address to listen on (STUDIO_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (STUDIO_PORT, default 7860)")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], help="(STUDIO_DEVICE, default auto)")
    p.add_argument(
        "--engine", choices=["torch", "openvino"], help="local engine; openvino = CPU fast path (STUDIO_ENGINE)"
    )
    p.add_argument("--openvino-precision", choices=["bf16", "f32"], help="(STUDIO_OPENVINO_PRECISION, default bf16)")
    p.add_argument("--backend", choices=["local", "sagemaker", "http"], help="(STUDIO_BACKEND, default local)")
    p.add_argument("--url", help="serving app URL for --backend http (STUDIO_URL)")
    p.add_argument("--endpoint", help="SageMaker endpoint name for --backend sagemaker (STUDIO_ENDPOINT)")
    p.add_argument("--auth", help="user:password, or a file with one user:password per line (STUDIO_AUTH)")
    p.add_argument("--no-auth", action="store_true", default=None, help="allow a public address without auth")
    p.add_argument("--share", action="store_true", default=None, help="create a Gradio share link (STUDIO_SHARE)")
    return p


_ENV = {
    "model": ("STUDIO_MODEL", str),
    "inpaint_model": ("STUDIO_INPAINT_MODEL", str),
    "models_dir": ("STUDIO_MODELS_DIR", Path),
    "outputs": ("STUDIO_OUTPUTS", Path),
    "host": ("STUDIO_HOST", str),
    "port": ("STUDIO_PORT", int),
    "device": ("STUDIO_DEVICE", str),
    "engine": ("STUDIO_ENGINE", str),
    "openvino_precision": ("STUDIO_OPENVINO_PRECISION", str),
    "backend": ("STUDIO_BACKEND", str),
    "url": ("STUDIO_URL", str),
    "endpoint": ("STUDIO_ENDPOINT", str),
    "auth": ("STUDIO_AUTH", str),
    "no_auth": ("STUDIO_NO_AUTH", bool),
    "share": ("STUDIO_SHARE", bool),
}

_LIMIT_ENV = {
    "max_width": "STUDIO_MAX_WIDTH",
    "max_height": "STUDIO_MAX_HEIGHT",
    "max_pixels": "STUDIO_MAX_PIXELS",
    "max_steps": "STUDIO_MAX_STEPS",
    "max_count": "STUDIO_MAX_COUNT",
}


def limits_from_env(environ: os._Environ | dict[str, str] | None = None) -> Limits:
    env = os.environ if environ is None else environ
    values = {key: parse_int(var, env[var]) for key, var in _LIMIT_ENV.items() if env.get(var, "").strip()}
    return Limits(**values)


def load_settings(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Parse flags and environment once; raise ConfigError naming the flag or variable."""
    env = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    values: dict[str, object] = {}
    for key, (var, kind) in _ENV.items():
        flag = getattr(args, key)
        if flag is not None:
            values[key] = Path(flag) if kind is Path else flag
            continue
        raw = env.get(var)
        if raw is None or (kind is not bool and not raw.strip()):
            continue
        if kind is bool:
            values[key] = parse_bool(var, raw)
        elif kind is int:
            values[key] = parse_int(var, raw)
        elif kind is Path:
            values[key] = Path(raw)
        else:
            values[key] = raw.strip()
    known = {f.name for f in fields(Settings)}
    assert set(values) <= known
    return Settings(**values, limits=limits_from_env(env)).validate()
