"""Every setting of the studio and of the serving app, parsed once from flags and environment variables.

Precedence: flag > environment variable > default. Values are parsed explicitly, never guessed: "false"/"0"/"no" are
false, numbers must be numbers, and choices become enums (`Backend`, `EngineKind`, `Device`, `Precision`). A bad
value is a ConfigError naming the flag or the variable, never a silent default. No other module reads os.environ
for a setting: they receive a `Settings` / `ServingSettings` (or call the small readers at the bottom).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from studio.types import Limits, RequestError

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}
E = TypeVar("E", bound=StrEnum)

SAGEMAKER_MODEL_DIR = Path("/opt/ml/model")
DEFAULT_MAX_BODY_BYTES = 20 * 1024 * 1024


class ConfigError(ValueError):
    """A flag or variable has a value that cannot be used; the message names it."""


class Backend(StrEnum):
    """Where generations run."""

    LOCAL = "local"
    HTTP = "http"  # a serving app at --url
    SAGEMAKER = "sagemaker"  # a SageMaker endpoint (real-time or async)
    LAMBDA = "lambda"  # an AWS Lambda function running the serving handler (CPU, OpenVINO)


class EngineKind(StrEnum):
    """Which local engine runs the model."""

    TORCH = "torch"
    OPENVINO = "openvino"  # the CPU fast path


class Device(StrEnum):
    AUTO = "auto"  # CUDA (fp16) when torch sees a GPU, else CPU (fp32)
    CUDA = "cuda"
    CPU = "cpu"


class Precision(StrEnum):
    """OpenVINO inference precision."""

    BF16 = "bf16"  # fast on CPUs with native bf16 (AVX512-BF16, AMX)
    F32 = "f32"  # within ~1e-5 of torch fp32


class OpenVINOWeights(StrEnum):  # the OpenVINO IR's weight format (optimum-intel's --weight-format names)
    AUTO = "auto"  # fp32 for f32 inference, int8 otherwise
    FP16 = "fp16"
    FP32 = "fp32"
    INT8 = "int8"  # UNet and text-encoder MatMul weights int8 per channel (NNCF): -0.4 GB for SD 1.5; convs fp16
    INT8_HYBRID = "int8-hybrid"  # int8 as above, and the UNet's convolutions int8 too (calibrated; faster)
    INT8_FULL = "int8-full"  # the UNet's linear layers too (calibrated; fastest, least exact): openvino_int8


_ALIASES: dict[type[StrEnum], dict[str, str]] = {
    Precision: {"fp32": "f32", "float32": "f32", "bfloat16": "bf16"},
}


# ---- value parsers (each names the flag or variable it parses) ---------------------------------------------------
def parse_bool(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}: expected true/false, got {text!r}")


def parse_int(name: str, text: str) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        raise ConfigError(f"{name}: expected a whole number, got {text!r}") from None


def parse_float(name: str, text: str) -> float:
    try:
        return float(str(text).strip())
    except ValueError:
        raise ConfigError(f"{name}: expected a number, got {text!r}") from None


def parse_enum(kind: type[E], name: str, value: str | E) -> E:
    """`value` as a member of `kind` (case-insensitive, with the documented aliases); ConfigError naming `name`."""
    if isinstance(value, kind):
        return value
    text = str(value).strip().lower()
    text = _ALIASES.get(kind, {}).get(text, text)
    try:
        return kind(text)
    except ValueError:
        choices = ", ".join(member.value for member in kind)
        raise ConfigError(f"{name}: expected one of {choices}, got {value!r}") from None


def _parse_s3(name: str, text: str, *, many: bool) -> Any:
    """One s3:// URI, or (`many`) comma-separated s3://bucket[/prefix] locations, a bare bucket meaning the whole
    bucket ("s3://b/"); ConfigError naming `name`."""
    from studio.aws import parse_s3_uri, s3_prefix

    try:
        if many:
            return tuple(s3_prefix(item, name) for item in (part.strip() for part in text.split(",")) if item)
        parse_s3_uri(text.strip(), name, need_key=False)
        return text.strip()
    except RequestError as exc:
        raise ConfigError(str(exc)) from None


# Live previews every N sampling steps by default: on a CPU a step takes seconds, and a preview costs far less
# than one (bench field preview_overhead_pct).
DEFAULT_LIVE_PREVIEW_EVERY = 2
# OpenVINO: static-shape UNet variants kept per engine (studio.engines.openvino_static); 0 runs the dynamic IR only.
DEFAULT_OPENVINO_STATIC_SHAPES = 1


# ---- the settings objects ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EngineSettings:
    """What `studio.engines.build()` needs: which backend, which model, where and how it runs, and the limits.

    Strings given for the enum fields are parsed on construction (ConfigError naming the field), so code and tests
    may write `EngineSettings(device="cpu")`; every consumer then sees enums.
    """

    backend: Backend = Backend.LOCAL
    model: str | None = None  # None: first model in models_dir, else the demo (studio); see models.serving_model
    inpaint_model: str | None = None
    models_dir: Path = Path("models")
    device: Device = Device.AUTO
    kind: EngineKind = EngineKind.TORCH
    precision: Precision = Precision.BF16  # OpenVINO only
    openvino_weights: OpenVINOWeights = OpenVINOWeights.AUTO
    openvino_cache: Path | None = None  # None: cache_dir()/openvino
    openvino_static_shapes: int = DEFAULT_OPENVINO_STATIC_SHAPES  # static variants kept per network; 0 = dynamic only
    url: str | None = None  # Backend.HTTP
    endpoint: str | None = None  # Backend.SAGEMAKER
    function: str | None = None  # Backend.LAMBDA: function name, ARN or function URL
    limits: Limits = field(default_factory=Limits)
    live_preview_every: int = DEFAULT_LIVE_PREVIEW_EVERY  # live previews every N sampling steps; 0 turns them off
    compile_unet: bool = False  # torch engine: torch.compile the UNet (studio.engines.tuning); slow first image

    def __post_init__(self) -> None:
        enums = ("backend", Backend), ("device", Device), ("kind", EngineKind), ("precision", Precision)
        for name, kind in (*enums, ("openvino_weights", OpenVINOWeights)):
            object.__setattr__(self, name, parse_enum(kind, name, getattr(self, name)))
        object.__setattr__(self, "models_dir", Path(self.models_dir))

    def validate(self) -> EngineSettings:
        if self.backend is Backend.HTTP and not self.url:
            raise ConfigError("--backend http needs --url (the address of a running `python -m studio.serving`)")
        if self.backend is Backend.SAGEMAKER and not self.endpoint:
            raise ConfigError("--backend sagemaker needs --endpoint NAME")
        if self.backend is Backend.LAMBDA and not self.function:
            raise ConfigError("--backend lambda needs --function NAME (a function name, ARN or function URL)")
        if self.openvino_static_shapes < 0:
            raise ConfigError(f"--openvino-static-shapes: must be 0 (off) or more, got {self.openvino_static_shapes}")
        if self.live_preview_every < 0:
            raise ConfigError(f"--live-preview-every: must be 0 (off) or more steps, got {self.live_preview_every}")
        if self.kind is EngineKind.OPENVINO and self.device is Device.CUDA:
            raise ConfigError("--device cuda: the OpenVINO engine runs on the CPU (use --engine torch on a GPU)")
        return self

    @property
    def target(self) -> str:
        """The model, URL or endpoint name this backend points at (what Settings shows and switches)."""
        if self.backend is Backend.HTTP:
            return self.url or ""
        if self.backend is Backend.SAGEMAKER:
            return self.endpoint or ""
        if self.backend is Backend.LAMBDA:
            return self.function or ""
        return self.model or ""

    def for_backend(self, backend: Backend | str, target: str) -> EngineSettings:
        """These settings pointed at another backend and target (the Settings tab's switch)."""
        backend = parse_enum(Backend, "backend", backend)
        target = target.strip() or None
        if backend is Backend.HTTP:
            return dataclasses.replace(self, backend=backend, url=target)
        if backend is Backend.SAGEMAKER:
            return dataclasses.replace(self, backend=backend, endpoint=target)
        if backend is Backend.LAMBDA:
            return dataclasses.replace(self, backend=backend, function=target)
        return dataclasses.replace(self, backend=backend, model=target or self.model)


@dataclass(frozen=True)
class Settings:
    """The studio (app.py): its engine, where outputs go, where it listens and who may use it."""

    engine: EngineSettings = field(default_factory=EngineSettings)
    outputs: Path = Path("outputs")
    host: str = "127.0.0.1"
    port: int = 7860
    auth: str | None = None  # "user:password" or a path to a file of such lines
    no_auth: bool = False
    share: bool = False
    check_endpoints: bool = True  # warn at start about running SageMaker endpoints (when credentials exist)
    api: bool = True  # the A1111-compatible HTTP API (/sdapi/v1) on the studio's own port; --no-api turns it off
    root_path: str | None = None  # the path prefix a proxy serves the studio under (e.g. /proxy/7860)
    tls_cert: Path | None = None  # HTTPS: certificate (PEM) ...
    tls_key: Path | None = None  # ... and its private key

    @property
    def limits(self) -> Limits:
        return self.engine.limits

    def validate(self) -> Settings:
        self.engine.validate()
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port: expected 1-65535, got {self.port}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together: give both (a PEM certificate and its key)")
        if self.root_path is not None and self.root_path and not self.root_path.startswith("/"):
            raise ConfigError(f"--root-path: must start with '/', got {self.root_path!r}")
        return self


@dataclass(frozen=True)
class ServingSettings:
    """The serving app (`python -m studio.serving`, `serve` in the container, the SageMaker toolkit handlers)."""

    engine: EngineSettings = field(default_factory=EngineSettings)
    model_dir: Path = SAGEMAKER_MODEL_DIR  # SageMaker unpacks model.tar.gz here (SM_MODEL_DIR)
    host: str = "0.0.0.0"
    port: int = 8080  # SageMaker's
    log_level: str = "info"
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    allow_urls: bool = False  # fetch http(s) image URLs (off: a server fetching arbitrary URLs is an SSRF risk)
    s3_output: str | None = None  # s3://bucket/prefix: write images there and return their URIs
    # s3:// locations requests may read from or write to; empty = any the container's IAM role can reach.
    s3_allowed_prefixes: tuple[str, ...] = ()

    @property
    def limits(self) -> Limits:
        return self.engine.limits

    def validate(self) -> ServingSettings:
        self.engine.validate()
        if self.max_body_bytes <= 0:
            raise ConfigError(f"STUDIO_MAX_BODY_BYTES: must be positive, got {self.max_body_bytes}")
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port: expected 1-65535, got {self.port}")
        return self


@dataclass(frozen=True)
class RaySettings:
    """Ray Serve (`python -m studio.serving.ray`, `serve run studio.serving.ray:build_app k=v`, deploy/ray/serve.yaml):
    the serving app's settings, where Serve's HTTP proxy listens, and the replicas (see studio.serving.ray)."""

    serving: ServingSettings = field(default_factory=ServingSettings)
    host: str = "127.0.0.1"  # Serve's HTTP proxy (Ray's own default address and port)
    port: int = 8000
    min_replicas: int = 1  # 0 allowed: the first request starts a replica
    max_replicas: int = 1
    target_ongoing_requests: float = 1.0  # autoscaling target per replica (one generation runs at a time)
    max_ongoing_requests: int = 4  # requests a replica accepts at once; the rest wait in Serve's queue
    replica_cpus: float = 1.0  # CPUs each replica reserves when it runs without a GPU
    replica_gpus: float | None = None  # None: 1 on a GPU cluster (or --device cuda), 0 otherwise
    address: str | None = None  # RAY_ADDRESS: join that cluster; None starts a local Ray

    def validate(self) -> RaySettings:
        self.serving.validate()
        checks = (
            (self.min_replicas >= 0, "min_replicas (--min-replicas): must be 0 or more", self.min_replicas),
            (self.max_replicas >= max(1, self.min_replicas),
             "max_replicas (--max-replicas): must be at least 1 and at least min_replicas", self.max_replicas),
            (self.target_ongoing_requests > 0, "target_ongoing_requests: must be above 0",
             self.target_ongoing_requests),
            (self.max_ongoing_requests >= 1, "max_ongoing_requests: must be 1 or more", self.max_ongoing_requests),
            (self.replica_cpus >= 0, "replica_cpus: must be 0 or more", self.replica_cpus),
            (self.replica_gpus is None or self.replica_gpus >= 0, "replica_gpus: must be 0 or more", self.replica_gpus),
            (0 < self.port < 65536, "--port: expected 1-65535", self.port),
        )
        for ok, message, value in checks:
            if not ok:
                raise ConfigError(f"{message}, got {value}")
        return self


# ---- flags and variables ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Option:
    """One setting: its field, its flag (None: environment only), its variable (None: flag only) and parser."""

    name: str
    flag: str | None
    env: str | None
    parse: Callable[[str, str], Any] = lambda _name, text: text.strip()
    help: str = ""
    is_switch: bool = False  # a flag without a value (store_true)


def _path(_name: str, text: str) -> Path:
    return Path(text.strip()).expanduser()


def _enum(kind: type[StrEnum]) -> Callable[[str, str], Any]:
    return lambda name, text: parse_enum(kind, name, text)


# Options of EngineSettings, shared by the studio and the serving app.
_ENGINE_OPTIONS = (
    _Option("model", "--model", "STUDIO_MODEL", help="diffusers folder, .safetensors/.ckpt file, hub id, or 'demo'"),
    _Option("inpaint_model", "--inpaint-model", "STUDIO_INPAINT_MODEL", help="dedicated 9-channel inpainting model"),
    _Option("models_dir", "--models-dir", "STUDIO_MODELS_DIR", _path, "drop-in folder scanned for models (./models)"),
    _Option("device", "--device", "STUDIO_DEVICE", _enum(Device), "auto (default), cuda or cpu"),
    _Option("kind", "--engine", "STUDIO_ENGINE", _enum(EngineKind), "torch (default) or openvino (CPU fast path)"),
    _Option("precision", "--openvino-precision", "STUDIO_OPENVINO_PRECISION", _enum(Precision), "bf16 or f32"),
    _Option("openvino_weights", "--openvino-weights", "STUDIO_OPENVINO_WEIGHTS", _enum(OpenVINOWeights),
            "IR weights: auto (int8; fp32 for f32), int8, int8-hybrid, int8-full (faster, less exact), fp16, fp32"),
    _Option("openvino_cache", None, "STUDIO_OPENVINO_CACHE", _path),
    _Option("openvino_static_shapes", "--openvino-static-shapes", "STUDIO_OPENVINO_STATIC_SHAPES", parse_int,
            f"static-shape variants kept per network ({DEFAULT_OPENVINO_STATIC_SHAPES}); 0: dynamic IR only"),
    _Option("live_preview_every", "--live-preview-every", "STUDIO_LIVE_PREVIEW_EVERY", parse_int,
            f"live previews every N sampling steps ({DEFAULT_LIVE_PREVIEW_EVERY}); 0 turns them off"),
    _Option("compile_unet", "--compile", "STUDIO_COMPILE", parse_bool, "torch.compile the UNet (slow 1st image)", True),
)
_STUDIO_BACKEND_OPTIONS = (
    _Option("backend", "--backend", "STUDIO_BACKEND", _enum(Backend), "local (default), http or sagemaker"),
    _Option("url", "--url", "STUDIO_URL", help="serving app URL for --backend http"),
    _Option("endpoint", "--endpoint", "STUDIO_ENDPOINT", help="SageMaker endpoint name for --backend sagemaker"),
    _Option("function", "--function", "STUDIO_FUNCTION", help="Lambda function name, ARN or URL for --backend lambda"),
)
_LIMIT_OPTIONS = tuple(
    _Option(name, None, f"STUDIO_{name.upper()}", parse_int)
    for name in ("max_width", "max_height", "max_pixels", "max_steps", "max_count")
)
_STUDIO_OPTIONS = (
    _Option("outputs", "--outputs", "STUDIO_OUTPUTS", _path, "where images and history are saved (./outputs)"),
    _Option("host", "--host", "STUDIO_HOST", help="address to listen on (127.0.0.1)"),
    _Option("port", "--port", "STUDIO_PORT", parse_int, "port (7860)"),
    _Option("auth", "--auth", "STUDIO_AUTH", help="user:password, or a file with one user:password per line"),
    _Option("no_auth", "--no-auth", "STUDIO_NO_AUTH", parse_bool, "allow a public address without auth", True),
    _Option("share", "--share", "STUDIO_SHARE", parse_bool, "create a Gradio share link (needs --auth)", True),
    _Option("check_endpoints", None, "STUDIO_CHECK_ENDPOINTS", parse_bool),
    _Option("api", None, "STUDIO_API", parse_bool),
    _Option("root_path", "--root-path", "STUDIO_ROOT_PATH", help="path prefix behind a proxy, e.g. /proxy/7860"),
    _Option("tls_cert", "--tls-cert", "STUDIO_TLS_CERT", _path, "HTTPS certificate (PEM), with --tls-key"),
    _Option("tls_key", "--tls-key", "STUDIO_TLS_KEY", _path, "HTTPS private key (PEM), with --tls-cert"),
)
_SERVING_OPTIONS = (
    _Option("model_dir", None, "SM_MODEL_DIR", _path),
    _Option("host", "--host", None, help="address to listen on (0.0.0.0)"),
    _Option("port", "--port", None, parse_int, "port (8080, SageMaker's)"),
    _Option("log_level", "--log-level", None, help="debug, info, warning or error"),
    _Option("max_body_bytes", None, "STUDIO_MAX_BODY_BYTES", parse_int),
    _Option("allow_urls", None, "STUDIO_ALLOW_URLS", parse_bool),
    _Option("s3_output", None, "STUDIO_S3_OUTPUT", functools.partial(_parse_s3, many=False)),
    _Option("s3_allowed_prefixes", None, "STUDIO_S3_ALLOWED_PREFIXES", functools.partial(_parse_s3, many=True)),
)
_RAY_OPTIONS = (
    _Option("host", "--host", None, help="address of Serve's HTTP proxy (127.0.0.1)"),
    _Option("port", "--port", None, parse_int, "port of Serve's HTTP proxy (8000)"),
    _Option("min_replicas", "--min-replicas", None, parse_int, "fewest replicas, 0 allowed (1)"),
    _Option("max_replicas", "--max-replicas", None, parse_int, "most replicas (1, or --min-replicas if larger)"),
    _Option("target_ongoing_requests", "--target-ongoing-requests", None, parse_float, "autoscaling target (1)"),
    _Option("max_ongoing_requests", "--max-ongoing-requests", None, parse_int, "requests per replica at once (4)"),
    _Option("replica_cpus", "--replica-cpus", None, parse_float, "CPUs per replica without a GPU (1)"),
    _Option("replica_gpus", "--replica-gpus", None, parse_float, "GPUs per replica (auto: 1 on a GPU cluster)"),
    _Option("address", None, "RAY_ADDRESS"),
)


def _add_flags(parser: argparse.ArgumentParser, options: tuple[_Option, ...]) -> None:
    for option in options:
        if option.flag is None:
            continue
        help_text = f"{option.help} ({option.env})" if option.env else option.help
        if option.is_switch:
            parser.add_argument(option.flag, dest=option.name, action="store_true", default=None, help=help_text)
        else:
            parser.add_argument(option.flag, dest=option.name, default=None, help=help_text)


def _collect(options: tuple[_Option, ...], args: argparse.Namespace | None, env: Mapping[str, str]) -> dict[str, Any]:
    """The values given for `options`: flag first, then variable; absent ones are left to the defaults."""
    values: dict[str, Any] = {}
    for option in options:
        given = getattr(args, option.name, None) if args is not None and option.flag else None
        if given is not None:
            values[option.name] = given if option.is_switch else option.parse(option.flag, str(given))
            continue
        raw = env.get(option.env) if option.env else None
        if raw is None or (not raw.strip() and option.parse is not parse_bool):
            continue
        values[option.name] = option.parse(option.env, raw)
    return values


def studio_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="app.py", description="SD Studio: a Stable Diffusion studio in your browser.")
    _add_flags(parser, _ENGINE_OPTIONS + _STUDIO_BACKEND_OPTIONS + _STUDIO_OPTIONS)
    # --no-api is the flag form of STUDIO_API=false (the API is on by default, as A1111's --api would be).
    parser.add_argument("--no-api", dest="no_api", action="store_true", default=None,
                        help="do not serve the A1111-compatible HTTP API /sdapi/v1 (STUDIO_API=false)")
    return parser


def serving_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="serve", description="SD Studio serving app (SageMaker container contract)")
    _add_flags(parser, _ENGINE_OPTIONS + _SERVING_OPTIONS)
    return parser


def _engine_settings(
    args: argparse.Namespace | None, env: Mapping[str, str], options: tuple[_Option, ...]
) -> EngineSettings:
    values = _collect(options, args, env)
    limits = Limits(**_collect(_LIMIT_OPTIONS, None, env))
    return EngineSettings(**values, limits=limits)


def load_settings(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """The studio's settings from flags and STUDIO_* variables; ConfigError names the flag or variable."""
    env = os.environ if environ is None else environ
    args = studio_parser().parse_args(argv)
    engine = _engine_settings(args, env, _ENGINE_OPTIONS + _STUDIO_BACKEND_OPTIONS)
    values = _collect(_STUDIO_OPTIONS, args, env)
    if args.no_api:
        values["api"] = False
    return Settings(engine=engine, **values).validate()


def load_serving_settings(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> ServingSettings:
    """The serving app's settings. A leading "serve" argument (SageMaker runs `docker run IMAGE serve`) is dropped.

    The serving app always runs its engine locally; which model it serves is decided by
    `studio.models.serving_model(settings)` (one precedence rule for every container entry point).
    """
    env = os.environ if environ is None else environ
    args_list = list(argv or [])
    if args_list and args_list[0] == "serve":
        args_list = args_list[1:]
    args = serving_parser().parse_args(args_list)
    engine = _engine_settings(args, env, _ENGINE_OPTIONS)
    values = _collect(_SERVING_OPTIONS, args, env)
    if "log_level" in values and values["log_level"] not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"--log-level: expected debug, info, warning or error, got {values['log_level']!r}")
    return ServingSettings(engine=engine, **values).validate()


def ray_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m studio.serving.ray",
        description="SD Studio's serving app on Ray Serve (a local Ray, or the cluster at RAY_ADDRESS)",
    )
    _add_flags(parser, _ENGINE_OPTIONS + _RAY_OPTIONS)
    return parser


def _ray_settings(
    args: argparse.Namespace | None,
    env: Mapping[str, str],
    engine_options: tuple[_Option, ...],
    ray_options: tuple[_Option, ...],
) -> RaySettings:
    engine = _engine_settings(args, env, engine_options)
    serving = ServingSettings(engine=engine, **_collect(_SERVING_OPTIONS, None, env))  # the STUDIO_* variables
    values = _collect(ray_options, args, env)
    values.setdefault("max_replicas", max(1, values.get("min_replicas", 1)))
    return RaySettings(serving=serving, **values).validate()


def load_ray_settings(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> RaySettings:
    """`python -m studio.serving.ray` flags (the engine's, Serve's address, the replicas) plus STUDIO_* and
    RAY_ADDRESS variables; ConfigError names the flag or variable."""
    env = os.environ if environ is None else environ
    args = ray_parser().parse_args(list(argv or []))
    return _ray_settings(args, env, _ENGINE_OPTIONS, _RAY_OPTIONS)


# Builder arguments (`serve run studio.serving.ray:build_app min_replicas=2`, a Serve config's `args:`) are the
# flags' names without dashes; Serve's own address comes from `serve run` / the config's http_options instead.
_BUILDER_OPTIONS = tuple(
    dataclasses.replace(option, flag=option.flag[2:].replace("-", "_"), is_switch=False)  # values come as text
    for option in _ENGINE_OPTIONS + _RAY_OPTIONS
    if option.flag and option.name not in ("host", "port")
)


def ray_settings_from_args(args: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> RaySettings:
    """Settings from Ray Serve application-builder arguments (strings from `serve run`, or YAML values)."""
    env = os.environ if environ is None else environ
    known = {option.flag: option for option in _BUILDER_OPTIONS}
    unknown = sorted(set(args) - set(known))
    if unknown:
        raise ConfigError(f"{unknown[0]}: not a studio.serving.ray argument; expected one of {', '.join(known)}")
    namespace = argparse.Namespace(**{known[key].name: str(value) for key, value in args.items() if value is not None})
    engine_names = {option.name for option in _ENGINE_OPTIONS}
    engine_part = tuple(o for o in _BUILDER_OPTIONS if o.name in engine_names)
    engine_part += tuple(o for o in _ENGINE_OPTIONS if o.flag is None)  # STUDIO_OPENVINO_CACHE
    ray_part = tuple(o for o in _BUILDER_OPTIONS if o.name not in engine_names)
    ray_part += tuple(o for o in _RAY_OPTIONS if o.flag is None)  # RAY_ADDRESS
    return _ray_settings(namespace, env, engine_part, ray_part)


# ---- small readers for process-wide locations --------------------------------------------------------------------
def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The studio's cache folder: $STUDIO_CACHE, else ~/.cache/sd-studio (created on demand by the callers)."""
    env = os.environ if environ is None else environ
    return Path(env.get("STUDIO_CACHE") or "~/.cache/sd-studio").expanduser()


def hub_offline(environ: Mapping[str, str] | None = None) -> bool:
    """True when the Hugging Face hub must not be contacted (HF_HUB_OFFLINE, read now or when huggingface_hub was
    imported)."""
    env = os.environ if environ is None else environ
    if env.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def load_lambda_settings(environ: Mapping[str, str] | None = None) -> ServingSettings:
    """The AWS Lambda handler's settings (studio.serving.aws_lambda): the serving app's STUDIO_* variables, with the
    OpenVINO engine unless STUDIO_ENGINE says otherwise (Lambda has CPUs only; an explicit STUDIO_ENGINE=torch wins)."""
    env = os.environ if environ is None else environ
    settings = load_serving_settings([], env)
    if not env.get("STUDIO_ENGINE", "").strip():
        engine = dataclasses.replace(settings.engine, kind=EngineKind.OPENVINO)
        settings = dataclasses.replace(settings, engine=engine.validate())
    return settings


def in_aws_lambda(environ: Mapping[str, str] | None = None) -> bool:
    """True inside an AWS Lambda execution environment (its runtime API address is set)."""
    env = os.environ if environ is None else environ
    return bool(env.get("AWS_LAMBDA_RUNTIME_API"))


def sagemaker_metadata_file(environ: Mapping[str, str] | None = None) -> Path:
    """Where a SageMaker notebook instance describes itself (SAGEMAKER_METADATA_FILE overrides it in tests)."""
    env = os.environ if environ is None else environ
    return Path(env.get("SAGEMAKER_METADATA_FILE") or "/opt/ml/metadata/resource-metadata.json")
