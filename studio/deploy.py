"""SageMaker endpoint lifecycle with plain boto3: package, upload, create, autoscale, status, list, delete.

The studio deploys the endpoint it then drives (studio.remote) and tears it down without leaving anything that
costs money. Everything here is explicit steps with progress callbacks, so the CLI (`python -m studio.deploy`) and
the Settings tab (studio.ui.deploy_panel) show the same thing.

Design notes:
- boto3 is imported lazily (inside functions): importing this module is cheap, the UI can import it at start.
- Every client comes from `aws_client()`, built on `boto3.session.Session()`, so AWS_ENDPOINT_URL (moto in tests),
  AWS_PROFILE and the rest of the standard credential chain are honoured. Credentials never appear in messages.
- `DeployPlan.validate()` makes only read-only calls and raises `PlanError` naming the field before anything is
  created. `create()` remembers what *this run* created and removes it again when a later step fails.
- Everything created is tagged `sd-studio=true` (plus mode and endpoint name), which is how `list_endpoints()`,
  `delete()` and the start-up warning find it.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import os
import re
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------------------------
# Constants

TAG_KEY = "sd-studio"  # value "true" on everything this module creates
TAG_MODE = "sd-studio:mode"  # "realtime" | "async"
TAG_ENDPOINT = "sd-studio:endpoint"  # the endpoint name a model/config/alarm belongs to
TAG_ARTIFACTS = "sd-studio:artifacts"  # s3:// prefix of the files this deploy uploaded (on the model)

MODES = ("realtime", "async")
VARIANT = "AllTraffic"
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")  # SageMaker endpoint/model/config names
HUB_ID = re.compile(r"^[\w-][\w.-]*/[\w.-]+$|^[\w-][\w.-]*$")  # Hugging Face "org/name" (or a bare name)
DEFAULT_INSTANCE_TYPE = "ml.g5.xlarge"
DEFAULT_PREFIX = "sd-studio"
DEFAULT_DLC = "pytorch-inference:2.6.0-gpu-py312"
DLC_ACCOUNT = "763104351884"
# Regions whose Deep Learning Containers live in another account (from the sagemaker-python-sdk image_uri_config).
DLC_ACCOUNT_BY_REGION = {
    "af-south-1": "626614931356",
    "ap-east-1": "871362719292",
    "ap-northeast-3": "364406365360",
    "cn-north-1": "727897471807",
    "cn-northwest-1": "727897471807",
    "eu-south-1": "692866216735",
    "me-south-1": "217643126080",
    "us-gov-west-1": "442386744353",
}
# The environment variable studio.sagemaker_inference / studio.serving read for a hub model id (no files in the tar).
MODEL_ENV_VAR = "STUDIO_MODEL"

# On-demand prices (USD per instance-hour) for SageMaker real-time/async inference in us-east-1. A small shipped
# table rather than the Pricing API (which needs extra permissions and is us-east-1/ap-south-1 only). g4dn and g5 are
# the published list prices; g6/g6e are estimates (EC2 price x the usual SageMaker markup). Other regions differ.
PRICES_AS_OF = "2025-06"
PRICE_NOTE = (
    f"approximate us-east-1 on-demand list price as of {PRICES_AS_OF}; other regions differ — "
    "see https://aws.amazon.com/sagemaker/pricing/"
)
INSTANCE_PRICES: dict[str, float] = {
    "ml.g4dn.xlarge": 0.736,
    "ml.g4dn.2xlarge": 0.94,
    "ml.g4dn.4xlarge": 1.505,
    "ml.g4dn.8xlarge": 2.72,
    "ml.g4dn.12xlarge": 4.89,
    "ml.g5.xlarge": 1.408,
    "ml.g5.2xlarge": 1.515,
    "ml.g5.4xlarge": 2.03,
    "ml.g5.8xlarge": 3.06,
    "ml.g5.12xlarge": 7.09,
    "ml.g6.xlarge": 1.127,
    "ml.g6.2xlarge": 1.369,
    "ml.g6.4xlarge": 1.853,
    "ml.g6.8xlarge": 2.82,
    "ml.g6.12xlarge": 6.442,
    "ml.g6e.xlarge": 2.605,
    "ml.g6e.2xlarge": 3.139,
    "ml.g6e.4xlarge": 4.206,
    "ml.p3.2xlarge": 3.825,
}

# Runtime requirements the PyTorch DLC lacks. torch (and torchvision/torchaudio) come with the DLC and must not be
# reinstalled; gradio is studio-only. openai-clip stays: it carries the CLIP BPE vocabulary that single-file
# checkpoints need to build their tokenizer offline. Used when the repo's requirements.txt is not next to the package.
_CONTAINER_EXCLUDE = {"torch", "torchvision", "torchaudio", "gradio", "gradio-client", "playwright"}
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

ProgressCallback = Callable[[str, str], None]  # (step name, message)

CREATE_STEPS = ("validate", "package", "upload", "model", "endpoint-config", "endpoint", "wait", "autoscaling")


# ----------------------------------------------------------------------------------------------------------------------
# Errors


class DeployError(RuntimeError):
    """A deploy/delete operation failed. `step` names the step; str(err) is a message for the user."""

    def __init__(self, step: str, message: str):
        self.step = step
        self.message = message
        super().__init__(f"{step}: {message}")


class PlanError(DeployError, ValueError):
    """The plan is invalid (raised before anything is created). `field` names the offending option."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__("validate", f"{field}: {message}")


class EndpointNotFound(DeployError):
    """No endpoint with that name exists."""


# ----------------------------------------------------------------------------------------------------------------------
# AWS clients


_LOADER: Any = None  # botocore's JSON model loader, shared by all our sessions (it only caches service models)
_LOADER_LOCK = threading.Lock()


def aws_session(region: str | None = None) -> Any:
    """A fresh boto3 Session honouring the standard credential chain and AWS_ENDPOINT_URL (imported lazily).

    Each operation gets a new session, so changed credentials/environment are picked up; the service-model loader
    is shared, which makes building clients ~4x cheaper (the models are parsed once per process).
    """
    global _LOADER
    import boto3
    import botocore.loaders
    import botocore.session

    with _LOADER_LOCK:
        if _LOADER is None:
            _LOADER = botocore.loaders.create_loader()
        core = botocore.session.Session()
        core.register_component("data_loader", _LOADER)
        session = boto3.session.Session(botocore_session=core, region_name=region)
        # boto3 appends its data folder to the loader's search path for every session: keep the list unique.
        _LOADER.search_paths[:] = list(dict.fromkeys(_LOADER.search_paths))
    return session


def aws_client(service: str, region: str | None = None, *, session: Any = None, quick: bool = False) -> Any:
    """The one place clients are built. `quick` = short timeouts and no retries (start-up checks).

    Clients are cached on the session they come from (building one costs ~0.1 s), so one operation that passes its
    session around builds each client once; a new operation starts from a fresh session and picks up any change in
    environment or credentials.
    """
    from botocore.config import Config

    session = session or aws_session(region)
    region = region or session.region_name
    cache = session.__dict__.setdefault("_sd_studio_clients", {})
    key = (service, region, quick)
    if key not in cache:
        if quick:
            config = Config(connect_timeout=3, read_timeout=5, retries={"mode": "standard", "max_attempts": 1})
        else:
            config = Config(retries={"mode": "standard", "max_attempts": 5}, user_agent_extra="sd-studio")
        cache[key] = session.client(service, region_name=region, config=config)
    return cache[key]


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _error_message(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Message", "")) or str(exc)


def _is_not_found(exc: BaseException) -> bool:
    """SageMaker says ValidationException "Could not find ..."; autoscaling ObjectNotFoundException; S3 404s."""
    code = _error_code(exc)
    if code in (
        "ObjectNotFoundException",
        "ResourceNotFound",
        "ResourceNotFoundException",
        "NoSuchKey",
        "404",
        "NoSuchBucket",
        "NotFound",
        "NoSuchEntity",
    ):
        return True
    message = _error_message(exc).lower()
    return code == "ValidationException" and (
        "could not find" in message or "no scal" in message or "not found" in message
    )


def resolve_region(region: str | None = None) -> str:
    """The region to use: explicit, else the session's (AWS_REGION / AWS_DEFAULT_REGION / profile)."""
    resolved = region or aws_session().region_name
    if not resolved:
        raise PlanError(
            "region",
            "no AWS region configured; pass --region (e.g. us-east-1) or set AWS_REGION / AWS_DEFAULT_REGION",
        )
    return resolved


# ----------------------------------------------------------------------------------------------------------------------
# Prices and images


def price_per_hour(instance_type: str) -> float | None:
    """On-demand USD per instance-hour from the shipped table (None when unknown)."""
    return INSTANCE_PRICES.get(instance_type)


def describe_price(
    instance_type: str, mode: str = "realtime", min_instances: int | None = None, max_instances: int = 1
) -> str:
    """One human sentence about what the deployment costs per hour, for the CLI prompt and the UI."""
    price = price_per_hour(instance_type)
    if price is None:
        return f"{instance_type}: price unknown"
    low = (0 if mode == "async" else 1) if min_instances is None else min_instances
    high = max(max_instances, low, 1)
    idle = "$0.00/h when idle (scales to zero)" if low == 0 else f"${low * price:.2f}/h with {low} instance(s)"
    return (
        f"{instance_type}: ${price:.3f} per instance-hour ({PRICE_NOTE}). {mode}: {idle}, "
        f"up to ${high * price:.2f}/h at {high} instance(s)."
    )


def default_image(region: str) -> str:
    """The AWS PyTorch inference DLC for `region` (our code rides in model.tar.gz)."""
    account = DLC_ACCOUNT_BY_REGION.get(region, DLC_ACCOUNT)
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"{account}.dkr.ecr.{region}.{domain}/{DEFAULT_DLC}"


# ----------------------------------------------------------------------------------------------------------------------
# The plan


@dataclass
class DeployPlan:
    """Everything `create()` needs. `validate()` fills in region, account, bucket, role and image.

    `model` is a local diffusers folder or single checkpoint file (packaged into model.tar.gz), "demo" (the built-in
    tiny demo model), an `s3://` model.tar.gz used as is (it must carry code/ for the DLC image), or a hub id
    (downloaded by the container at start; only our code is packaged).
    """

    name: str
    model: str
    instance_type: str = DEFAULT_INSTANCE_TYPE
    mode: str = "realtime"
    min_instances: int | None = None  # None: 1 for realtime, 0 for async
    max_instances: int = 1
    bucket: str | None = None  # None: sagemaker-{region}-{account}, created if missing
    prefix: str = DEFAULT_PREFIX
    role: str | None = None  # None: discovered on a SageMaker notebook, else required
    image: str | None = None  # None: the PyTorch inference DLC for the region
    region: str | None = None
    account: str | None = None  # filled by validate()
    # Autoscaling targets: realtime = invocations per instance per minute; async = queued requests per instance.
    target_invocations_per_instance: float = 10.0
    target_backlog_per_instance: float = 2.0
    max_concurrent_invocations: int = 1  # async: requests a single instance works on at once
    startup_timeout_seconds: int = 1800  # container start (pip install + model download) may take a while
    env: dict[str, str] = field(default_factory=dict)

    @property
    def model_kind(self) -> str:
        """ "s3", "local", "demo" or "hub"."""
        if self.model.startswith("s3://"):
            return "s3"
        if self.model == "demo":
            return "demo"
        if Path(self.model).expanduser().exists():
            return "local"
        return "hub"

    @property
    def effective_min(self) -> int:
        if self.min_instances is None:
            return 0 if self.mode == "async" else 1
        return self.min_instances

    def validate(self, *, check_aws: bool = True, session: Any = None) -> DeployPlan:
        """Check every option; with `check_aws`, also region, credentials, account, bucket, role and name clash.

        Returns a copy with region/account/bucket/role/image filled in. Raises PlanError naming the field.
        Only read-only AWS calls are made (sts, s3 head_bucket, sagemaker describe, iam get_role).
        """
        self._validate_offline()
        if not check_aws:
            return self
        return self._validate_aws(session)

    def _validate_offline(self) -> None:
        if not isinstance(self.name, str) or not NAME_PATTERN.match(self.name):
            raise PlanError(
                "name",
                f"{self.name!r} is not a valid SageMaker endpoint name: 1-63 letters, digits and hyphens, "
                "starting and ending with a letter or digit (pattern ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$)",
            )
        if self.mode not in MODES:
            raise PlanError("mode", f"must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.instance_type not in INSTANCE_PRICES:
            raise PlanError(
                "instance_type",
                f"unknown instance type {self.instance_type!r}; known GPU types: {', '.join(INSTANCE_PRICES)}",
            )
        for name in ("min_instances", "max_instances"):
            value = getattr(self, name)
            if value is None and name == "min_instances":
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise PlanError(name, f"must be a whole number, got {value!r}")
            if value < 0:
                raise PlanError(name, f"must be 0 or more, got {value}")
        if self.mode == "realtime" and self.effective_min < 1:
            raise PlanError(
                "min_instances",
                f"a real-time endpoint needs at least 1 instance, got {self.effective_min}; "
                "only --mode async can scale to zero",
            )
        if self.max_instances < max(1, self.effective_min):
            raise PlanError(
                "max_instances",
                f"must be at least 1 and at least min_instances ({self.effective_min}), got {self.max_instances}",
            )
        if not isinstance(self.model, str) or not self.model.strip():
            raise PlanError("model", "is empty; give a local folder/file, s3://bucket/key, a hub id or 'demo'")
        kind = self.model_kind
        if kind == "s3" and not re.match(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+", self.model):
            raise PlanError("model", f"{self.model!r} is not an s3://bucket/key URI")
        if kind == "hub" and (self.model.startswith((".", "/", "~")) or not HUB_ID.match(self.model)):
            raise PlanError("model", f"{self.model!r} does not exist locally and is not a hub id (org/name)")
        if kind == "local":
            path = Path(self.model).expanduser()
            if path.is_dir() and not (path / "model_index.json").is_file():
                raise PlanError("model", f"{self.model!r} is a folder without model_index.json (not a diffusers model)")
            if path.is_file() and path.suffix not in (".safetensors", ".ckpt"):
                raise PlanError("model", f"{self.model!r} is not a .safetensors or .ckpt checkpoint")
        if self.bucket is not None and not re.match(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", self.bucket):
            raise PlanError("bucket", f"{self.bucket!r} is not a valid S3 bucket name")
        if not re.match(r"^[\w!.*'()/-]*$", self.prefix or ""):
            raise PlanError("prefix", f"{self.prefix!r} has characters S3 keys should not use")
        if self.role is not None and not re.match(r"^arn:aws[\w-]*:iam::\d{12}:role/[\w+=,.@/-]+$", self.role):
            raise PlanError("role", f"{self.role!r} is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)")
        if self.image is not None and not re.match(
            r"^[\w.-]+(:\d+)?/[\w./-]+(:[\w.-]+|@sha256:[0-9a-f]{64})?$", self.image
        ):
            raise PlanError("image", f"{self.image!r} is not a container image URI")
        for name in ("target_invocations_per_instance", "target_backlog_per_instance"):
            if not getattr(self, name) > 0:
                raise PlanError(name, f"must be greater than 0, got {getattr(self, name)!r}")
        if not 1 <= self.max_concurrent_invocations <= 1000:
            raise PlanError("max_concurrent_invocations", f"must be 1-1000, got {self.max_concurrent_invocations}")
        if not 60 <= self.startup_timeout_seconds <= 3600:
            raise PlanError("startup_timeout_seconds", f"must be 60-3600, got {self.startup_timeout_seconds}")

    def _validate_aws(self, session: Any) -> DeployPlan:
        from botocore.exceptions import BotoCoreError, ClientError

        region = resolve_region(self.region)
        session = session or aws_session(region)
        known = {r for p in session.get_available_partitions() for r in session.get_available_regions("sagemaker", p)}
        if known and region not in known:
            raise PlanError("region", f"{region!r} is not a SageMaker region")
        if session.get_credentials() is None:
            raise PlanError(
                "credentials",
                "no AWS credentials found (environment, ~/.aws/credentials, AWS_PROFILE/SSO or an instance role); "
                "configure them, e.g. with `aws configure`",
            )
        try:
            identity = aws_client("sts", region, session=session).get_caller_identity()
        except ClientError as exc:
            raise PlanError("credentials", f"AWS rejected the credentials ({_error_code(exc)})") from exc
        except BotoCoreError as exc:
            raise PlanError("credentials", f"could not check the credentials: {type(exc).__name__}: {exc}") from exc
        account = identity["Account"]
        plan = dataclasses.replace(self, region=region, account=account)
        plan.bucket = self.bucket or f"sagemaker-{region}-{account}"
        plan.image = self.image or default_image(region)
        plan.role = self.role or discover_role(session=session, region=region, caller_arn=identity.get("Arn", ""))
        if plan.role is None:
            raise PlanError(
                "role",
                "no execution role given and none could be discovered (not on a SageMaker notebook); pass --role "
                "arn:aws:iam::<account>:role/<a role SageMaker can assume, with S3 and ECR read access>",
            )
        sm = aws_client("sagemaker", region, session=session)
        try:
            existing = sm.describe_endpoint(EndpointName=self.name)
        except ClientError as exc:
            if not _is_not_found(exc):
                raise PlanError("name", f"could not check for an existing endpoint: {_error_message(exc)}") from exc
        else:
            raise PlanError(
                "name",
                f"an endpoint named {self.name!r} already exists ({existing['EndpointStatus']}); "
                "delete it first or choose another name",
            )
        if self.model_kind != "s3" or self.mode == "async":
            s3 = aws_client("s3", region, session=session)
            try:
                s3.head_bucket(Bucket=plan.bucket)
            except ClientError as exc:
                if _error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                    raise PlanError(
                        "bucket", f"bucket {plan.bucket!r} exists but is not accessible ({_error_code(exc)})"
                    ) from exc
        return plan


def discover_role(*, session: Any = None, region: str | None = None, caller_arn: str = "") -> str | None:
    """The execution role of the SageMaker notebook/Studio we run on, or None when not on one.

    Notebook instances write /opt/ml/metadata/resource-metadata.json (ResourceName → describe_notebook_instance);
    otherwise, when the caller is an assumed role that SageMaker may assume (its trust policy names
    sagemaker.amazonaws.com, as notebook and Studio execution roles do), that role's IAM ARN is used.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    session = session or aws_session(region)
    metadata = Path(os.environ.get("SAGEMAKER_METADATA_FILE", "/opt/ml/metadata/resource-metadata.json"))
    if metadata.is_file():
        try:
            info = json.loads(metadata.read_text())
            name = info.get("ResourceName")
            if name and ":notebook-instance/" in info.get("ResourceArn", ""):
                role = aws_client("sagemaker", region, session=session).describe_notebook_instance(
                    NotebookInstanceName=name
                )["RoleArn"]
                log.info("using the notebook instance's execution role %s", role)
                return role
        except (OSError, ValueError, KeyError, ClientError, BotoCoreError) as exc:
            log.warning("could not read the notebook's role from %s: %s", metadata, exc)
    match = re.match(r"^arn:(aws[\w-]*):sts::(\d{12}):assumed-role/([\w+=,.@-]+)/", caller_arn or "")
    if not match:
        return None
    partition, account, role_name = match.groups()
    try:
        role = aws_client("iam", region, session=session).get_role(RoleName=role_name)["Role"]
    except (ClientError, BotoCoreError) as exc:
        log.info("cannot read role %s (%s); not using it as the execution role", role_name, _error_code(exc))
        return None
    trust = role.get("AssumeRolePolicyDocument") or {}
    if isinstance(trust, str):
        from urllib.parse import unquote

        trust = json.loads(unquote(trust))
    if "sagemaker.amazonaws.com" not in json.dumps(trust):
        log.info("role %s is not assumable by SageMaker; not using it", role_name)
        return None
    log.info("using the caller's role %s as the execution role", role["Arn"])
    return role["Arn"]


# ----------------------------------------------------------------------------------------------------------------------
# Packaging


def _package_root() -> Path:
    return Path(__file__).resolve().parent


def container_requirements() -> list[str]:
    """code/requirements.txt: the repo's runtime requirements minus what the DLC has (torch) or never needs (UI)."""
    req_file = _package_root().parent / "requirements.txt"
    if not req_file.is_file():
        return list(_FALLBACK_REQUIREMENTS)
    lines = []
    for raw in req_file.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name = re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].strip().lower().replace("_", "-")
        if name not in _CONTAINER_EXCLUDE:
            lines.append(line)
    return lines


def _package_files() -> Iterator[tuple[Path, str]]:
    """(file, arcname) for the studio package: .py files and configs only, no caches."""
    root = _package_root()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or "__pycache__" in rel.parts:
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
    if plan.model_kind == "demo":
        from studio.models import demo_model_dir

        return Path(demo_model_dir())
    if plan.model_kind == "local":
        return Path(plan.model).expanduser().resolve()
    return None


def package_model(plan: DeployPlan, out_path: str | os.PathLike[str]) -> Path:
    """Write model.tar.gz as the PyTorch inference toolkit expects it; returns the path.

    Layout: code/inference.py (= studio/sagemaker_inference.py), code/requirements.txt (installed by the DLC at
    start), code/studio/ (our package), and the model files at the archive root when the model is local (a diffusers
    folder's contents, or the single checkpoint file). A hub-id model is not packaged; the container gets it through
    the STUDIO_MODEL environment variable (see `model_environment`).
    """
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    inference = _package_root() / "sagemaker_inference.py"
    if not inference.is_file():
        raise DeployError("package", f"{inference} is missing; the container entry point cannot be packaged")
    model_path = _local_model_path(plan)
    # compresslevel 1: weights barely compress and level 9 takes minutes on multi-GB checkpoints.
    with tarfile.open(out, "w:gz", compresslevel=1) as tar:
        tar.add(inference, arcname="code/inference.py")
        _add_bytes(tar, "code/requirements.txt", ("\n".join(container_requirements()) + "\n").encode())
        for path, arcname in _package_files():
            tar.add(path, arcname=arcname)
        if model_path is not None:
            if model_path.is_dir():
                for path in sorted(model_path.rglob("*")):
                    rel = path.relative_to(model_path)
                    if path.is_file() and not any(part.startswith(".") for part in rel.parts):
                        if rel.parts[0] == "code":
                            raise DeployError("package", f"{model_path} has a code/ folder, which would clash")
                        tar.add(path, arcname=rel.as_posix())
            else:
                tar.add(model_path, arcname=model_path.name)
    log.info("packaged %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return out


def model_environment(plan: DeployPlan) -> dict[str, str]:
    """Container environment: the inference toolkit's settings, timeouts, and the hub id when not packaged."""
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
    }
    if plan.model_kind == "hub":
        env[MODEL_ENV_VAR] = plan.model
    env.update(plan.env)
    return env


# ----------------------------------------------------------------------------------------------------------------------
# Create


@dataclass
class DeployResult:
    """What `create()` made."""

    endpoint_name: str
    model_name: str
    endpoint_config_name: str
    model_data_url: str
    mode: str
    instance_type: str
    region: str
    async_output_path: str | None = None
    async_failure_path: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)


class _Undo:
    """What this run created, as (description, undo function), undone in reverse order on failure."""

    def __init__(self, progress: ProgressCallback):
        self.actions: list[tuple[str, Callable[[], None]]] = []
        self.progress = progress

    def push(self, description: str, undo: Callable[[], None]) -> None:
        self.actions.append((description, undo))

    def run(self) -> list[str]:
        """Undo everything; returns the descriptions that could not be undone (logged, never raised)."""
        failed = []
        for description, undo in reversed(self.actions):
            try:
                undo()
                self.progress("rollback", f"removed {description}")
            except Exception as exc:  # noqa: BLE001 - keep undoing the rest, report what is left
                if _is_not_found(exc):
                    self.progress("rollback", f"{description} was already gone")
                    continue
                log.exception("rollback of %s failed", description)
                self.progress("rollback", f"could NOT remove {description}: {_error_message(exc)}")
                failed.append(description)
        self.actions.clear()
        return failed


def _tags(plan: DeployPlan, **extra: str) -> list[dict[str, str]]:
    tags = {TAG_KEY: "true", TAG_MODE: plan.mode, TAG_ENDPOINT: plan.name, **extra}
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


_STAMP_LENGTH = len("20260101-000000")


def _name_stem(name: str) -> str:
    """The endpoint name as it starts model/config names (cut so `{stem}-{stamp}` fits in 63 characters)."""
    return name[: 63 - _STAMP_LENGTH - 1].rstrip("-")


def _resource_names(name: str, stamp: str) -> str:
    """Model/config name: `{name}-{stamp}`, cut so it stays within SageMaker's 63 characters."""
    return f"{_name_stem(name)}-{stamp}"


def _s3_join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def _backlog_alarm_name(name: str) -> str:
    return f"{name}-has-backlog-without-capacity"


def _policy_names(name: str) -> dict[str, str]:
    return {
        "invocations": f"{name}-invocations-target",
        "backlog": f"{name}-backlog-target",
        "scale-out-from-zero": f"{name}-scale-out-from-zero",
    }


def create(
    plan: DeployPlan,
    progress: ProgressCallback | None = None,
    *,
    poll_seconds: float = 15.0,
    timeout_seconds: float = 3600.0,
    session: Any = None,
) -> DeployResult:
    """Deploy `plan` as explicit steps (see CREATE_STEPS), reporting each via progress(step, message).

    When a step fails, everything this run created is removed again and DeployError(step, ...) is raised.
    """
    from botocore.exceptions import ClientError

    def say(step: str, message: str) -> None:
        log.info("%s: %s", step, message)
        if progress is not None:
            progress(step, message)

    step = "validate"
    say(step, f"checking the plan for {plan.name!r}")
    plan._validate_offline()
    session = session or aws_session(resolve_region(plan.region))
    plan = plan.validate(session=session)
    region = plan.region or ""
    say(step, f"region {region}, account {plan.account}, role {plan.role}, image {plan.image}")

    sm = aws_client("sagemaker", region, session=session)
    s3 = aws_client("s3", region, session=session)
    autoscaling = aws_client("application-autoscaling", region, session=session)
    cloudwatch = aws_client("cloudwatch", region, session=session)
    undo = _Undo(say)
    stamp = _stamp()
    resource_name = _resource_names(plan.name, stamp)
    run_prefix = _s3_join(plan.prefix, plan.name, stamp)
    endpoint_prefix = _s3_join(plan.prefix, plan.name)
    bucket = plan.bucket or ""
    result = DeployResult(
        endpoint_name=plan.name,
        model_name=resource_name,
        endpoint_config_name=resource_name,
        model_data_url=plan.model if plan.model_kind == "s3" else f"s3://{bucket}/{run_prefix}/model.tar.gz",
        mode=plan.mode,
        instance_type=plan.instance_type,
        region=region,
    )
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="sd-studio-deploy-") as tmp:
            # -- package
            step = "package"
            t0 = time.monotonic()
            tarball: Path | None = None
            if plan.model_kind == "s3":
                say(step, f"skipped: using the model data {plan.model} as is")
            else:
                what = {"local": plan.model, "demo": "the demo model", "hub": f"code only (hub model {plan.model})"}
                say(step, f"packaging {what[plan.model_kind]} into model.tar.gz")
                tarball = package_model(plan, Path(tmp) / "model.tar.gz")
                say(step, f"model.tar.gz is {tarball.stat().st_size / 1e6:.1f} MB")
            result.seconds[step] = time.monotonic() - t0

            # -- upload
            step = "upload"
            t0 = time.monotonic()
            if tarball is not None or plan.mode == "async":  # async results go to the bucket too
                _ensure_bucket(s3, bucket, region, undo, say)
            if tarball is None:
                say(step, "skipped (nothing to upload)")
            else:
                key = f"{run_prefix}/model.tar.gz"
                size = tarball.stat().st_size
                say(step, f"uploading {size / 1e6:.1f} MB to s3://{bucket}/{key}")
                _upload(s3, tarball, bucket, key, size, say)
                undo.push(f"uploaded s3://{bucket}/{key}", lambda: s3.delete_object(Bucket=bucket, Key=key))
                say(step, f"uploaded in {time.monotonic() - t0:.1f} s")
            result.seconds[step] = time.monotonic() - t0

            # -- model
            step = "model"
            t0 = time.monotonic()
            extra = {TAG_ARTIFACTS: f"s3://{bucket}/{run_prefix}/"} if tarball is not None else {}
            sm.create_model(
                ModelName=resource_name,
                ExecutionRoleArn=plan.role,
                PrimaryContainer={
                    "Image": plan.image,
                    "ModelDataUrl": result.model_data_url,
                    "Environment": model_environment(plan),
                },
                Tags=_tags(plan, **extra),
            )
            undo.push(f"model {resource_name}", lambda: sm.delete_model(ModelName=resource_name))
            say(step, f"created model {resource_name} (image {plan.image})")
            result.seconds[step] = time.monotonic() - t0

            # -- endpoint config
            step = "endpoint-config"
            t0 = time.monotonic()
            variant = {
                "VariantName": VARIANT,
                "ModelName": resource_name,
                "InstanceType": plan.instance_type,
                "InitialInstanceCount": max(1, plan.effective_min),
                "ContainerStartupHealthCheckTimeoutInSeconds": plan.startup_timeout_seconds,
                "ModelDataDownloadTimeoutInSeconds": plan.startup_timeout_seconds,
            }
            config_args: dict[str, Any] = {
                "EndpointConfigName": resource_name,
                "ProductionVariants": [variant],
                "Tags": _tags(plan),
            }
            if plan.mode == "async":
                result.async_output_path = f"s3://{bucket}/{endpoint_prefix}/async-output/"
                result.async_failure_path = f"s3://{bucket}/{endpoint_prefix}/async-failures/"
                config_args["AsyncInferenceConfig"] = {
                    "OutputConfig": {
                        "S3OutputPath": result.async_output_path,
                        "S3FailurePath": result.async_failure_path,
                    },
                    "ClientConfig": {"MaxConcurrentInvocationsPerInstance": plan.max_concurrent_invocations},
                }
            sm.create_endpoint_config(**config_args)
            undo.push(
                f"endpoint config {resource_name}", lambda: sm.delete_endpoint_config(EndpointConfigName=resource_name)
            )
            say(
                step,
                f"created endpoint config {resource_name} ({plan.instance_type} x{variant['InitialInstanceCount']}"
                + (f", async output {result.async_output_path}" if plan.mode == "async" else "")
                + ")",
            )
            result.seconds[step] = time.monotonic() - t0

            # -- endpoint
            step = "endpoint"
            t0 = time.monotonic()
            sm.create_endpoint(EndpointName=plan.name, EndpointConfigName=resource_name, Tags=_tags(plan))
            undo.push(f"endpoint {plan.name}", lambda: _delete_endpoint_and_wait(sm, plan.name, poll_seconds))
            say(step, f"creating endpoint {plan.name} (this takes 5-15 minutes on AWS)")
            result.seconds[step] = time.monotonic() - t0

            # -- wait
            step = "wait"
            t0 = time.monotonic()
            _wait_in_service(sm, plan.name, say, poll_seconds, timeout_seconds)
            result.seconds[step] = time.monotonic() - t0

            # -- autoscaling
            step = "autoscaling"
            t0 = time.monotonic()
            _configure_autoscaling(plan, autoscaling, cloudwatch, undo, say)
            result.seconds[step] = time.monotonic() - t0
    except BaseException as exc:
        failed = undo.run() if undo.actions else []
        left = f"; could not remove: {', '.join(failed)}" if failed else ""
        if isinstance(exc, DeployError):
            message = exc.message if exc.step == step else str(exc)
        elif isinstance(exc, ClientError):
            message = f"{_error_code(exc)}: {_error_message(exc)}"
        elif isinstance(exc, Exception):  # BotoCoreError, OSError, ... and bugs: still a clear, step-named error
            message = f"{type(exc).__name__}: {exc}"
        else:
            raise  # KeyboardInterrupt and the like: rolled back, now let it through unchanged
        say(step, f"FAILED: {message}" + (" (rolled back what this run created)" if not failed else left))
        raise DeployError(step, message + left) from exc
    say("done", f"endpoint {plan.name} is InService ({time.monotonic() - started:.0f} s)")
    return result


def _ensure_bucket(s3: Any, bucket: str, region: str, undo: _Undo, say: ProgressCallback) -> None:
    from botocore.exceptions import ClientError

    try:
        s3.head_bucket(Bucket=bucket)
        return
    except ClientError as exc:
        if _error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
            raise
    args: dict[str, Any] = {"Bucket": bucket}
    if region != "us-east-1":
        args["CreateBucketConfiguration"] = {"LocationConstraint": region}
    s3.create_bucket(**args)
    undo.push(f"bucket s3://{bucket}", lambda: s3.delete_bucket(Bucket=bucket))
    s3.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": [{"Key": TAG_KEY, "Value": "true"}]})
    say("upload", f"created bucket s3://{bucket} (private)")


def _upload(s3: Any, path: Path, bucket: str, key: str, size: int, say: ProgressCallback) -> None:
    from boto3.s3.transfer import TransferConfig

    lock = threading.Lock()  # the transfer manager calls back from several threads
    state = {"sent": 0, "reported": time.monotonic()}

    def on_bytes(n: int) -> None:
        with lock:
            state["sent"] += n
            now = time.monotonic()
            if now - state["reported"] >= 5 and size:
                state["reported"] = now
                say("upload", f"{state['sent'] / size:.0%} of {size / 1e6:.1f} MB")

    s3.upload_file(
        str(path),
        bucket,
        key,
        ExtraArgs={"Tagging": f"{TAG_KEY}=true"},
        Callback=on_bytes,
        Config=TransferConfig(multipart_threshold=64 * 1024 * 1024, multipart_chunksize=64 * 1024 * 1024),
    )


def _wait_in_service(sm: Any, name: str, say: ProgressCallback, poll_seconds: float, timeout_seconds: float) -> None:
    """Poll until InService; raise DeployError with SageMaker's FailureReason when it fails, or on timeout."""
    started = time.monotonic()
    last_status, last_report = None, started
    while True:
        info = sm.describe_endpoint(EndpointName=name)
        status = info["EndpointStatus"]
        elapsed = time.monotonic() - started
        if status != last_status or time.monotonic() - last_report >= 60:
            say("wait", f"{name}: {status} after {elapsed:.0f} s")
            last_status, last_report = status, time.monotonic()
        if status == "InService":
            return
        if status in ("Failed", "OutOfService", "Deleting", "RollingBack"):
            reason = info.get("FailureReason") or "no reason given"
            raise DeployError(
                "wait",
                f"endpoint {name} is {status}: {reason} "
                f"(container logs: CloudWatch log group /aws/sagemaker/Endpoints/{name})",
            )
        if elapsed > timeout_seconds:
            raise DeployError("wait", f"endpoint {name} still {status} after {timeout_seconds:.0f} s; giving up")
        time.sleep(poll_seconds)


def _delete_endpoint_and_wait(sm: Any, name: str, poll_seconds: float, timeout_seconds: float = 1200) -> None:
    """Delete the endpoint and wait until it is gone (a config/model cannot go while the endpoint uses it)."""
    from botocore.exceptions import ClientError

    sm.delete_endpoint(EndpointName=name)
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        try:
            sm.describe_endpoint(EndpointName=name)
        except ClientError as exc:
            if _is_not_found(exc):
                return
            raise
        time.sleep(poll_seconds)
    raise DeployError("delete", f"endpoint {name} still exists {timeout_seconds:.0f} s after deleting it")


def _resource_id(name: str) -> str:
    return f"endpoint/{name}/variant/{VARIANT}"


def _configure_autoscaling(
    plan: DeployPlan, autoscaling: Any, cloudwatch: Any, undo: _Undo, say: ProgressCallback
) -> None:
    """Register the variant as a scalable target and attach the policies (and alarm) for the mode."""
    resource_id = _resource_id(plan.name)
    common = {"ServiceNamespace": "sagemaker", "ResourceId": resource_id, "ScalableDimension": SCALABLE_DIMENSION}
    autoscaling.register_scalable_target(
        **common, MinCapacity=plan.effective_min, MaxCapacity=plan.max_instances, Tags={TAG_KEY: "true"}
    )
    undo.push(f"scalable target {resource_id}", lambda: autoscaling.deregister_scalable_target(**common))
    say("autoscaling", f"scalable target {resource_id}: {plan.effective_min}-{plan.max_instances} instances")
    names = _policy_names(plan.name)
    dimensions = [{"Name": "EndpointName", "Value": plan.name}]

    def put_policy(key: str, **body: Any) -> str:
        policy_name = names[key]
        arn = autoscaling.put_scaling_policy(PolicyName=policy_name, **common, **body)["PolicyARN"]
        undo.push(
            f"scaling policy {policy_name}", lambda: autoscaling.delete_scaling_policy(PolicyName=policy_name, **common)
        )
        return arn

    if plan.mode == "realtime":
        put_policy(
            "invocations",
            PolicyType="TargetTrackingScaling",
            TargetTrackingScalingPolicyConfiguration={
                "TargetValue": plan.target_invocations_per_instance,
                "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
                "ScaleInCooldown": 300,
                "ScaleOutCooldown": 60,
            },
        )
        say("autoscaling", f"target tracking: {plan.target_invocations_per_instance:g} invocations/instance/minute")
        return

    put_policy(
        "backlog",
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": plan.target_backlog_per_instance,
            "CustomizedMetricSpecification": {
                "MetricName": "ApproximateBacklogSizePerInstance",
                "Namespace": "AWS/SageMaker",
                "Dimensions": dimensions,
                "Statistic": "Average",
            },
            "ScaleInCooldown": 600,
            "ScaleOutCooldown": 120,
        },
    )
    say("autoscaling", f"target tracking: {plan.target_backlog_per_instance:g} queued requests per instance")
    # Target tracking cannot scale out from 0 instances (no per-instance metric), so a step policy does it,
    # fired by an alarm on HasBacklogWithoutCapacity.
    step_arn = put_policy(
        "scale-out-from-zero",
        PolicyType="StepScaling",
        StepScalingPolicyConfiguration={
            "AdjustmentType": "ChangeInCapacity",
            "MetricAggregationType": "Average",
            "Cooldown": 300,
            "StepAdjustments": [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}],
        },
    )
    alarm_name = _backlog_alarm_name(plan.name)
    cloudwatch.put_metric_alarm(
        AlarmName=alarm_name,
        AlarmDescription=f"SD Studio: scale {plan.name} out from zero when requests are queued",
        MetricName="HasBacklogWithoutCapacity",
        Namespace="AWS/SageMaker",
        Dimensions=dimensions,
        Statistic="Average",
        Period=60,
        EvaluationPeriods=2,
        DatapointsToAlarm=2,
        Threshold=1,
        ComparisonOperator="GreaterThanOrEqualToThreshold",
        TreatMissingData="missing",
        AlarmActions=[step_arn],
        Tags=_tags(plan),
    )
    undo.push(f"alarm {alarm_name}", lambda: cloudwatch.delete_alarms(AlarmNames=[alarm_name]))
    say("autoscaling", f"step scaling from zero, fired by alarm {alarm_name} (HasBacklogWithoutCapacity >= 1)")


# ----------------------------------------------------------------------------------------------------------------------
# Status and list


@dataclass
class EndpointInfo:
    """One sd-studio endpoint as `list`/`status` show it."""

    name: str
    status: str
    mode: str
    instance_type: str
    instance_count: int
    created: datetime | None
    price_per_hour: float | None  # per instance
    failure_reason: str | None = None
    endpoint_config_name: str = ""
    model_names: list[str] = field(default_factory=list)
    min_instances: int | None = None
    max_instances: int | None = None
    async_output_path: str | None = None
    async_failure_path: str | None = None

    @property
    def estimated_cost_per_hour(self) -> float | None:
        """Current instances x on-demand price (an async endpoint scaled to zero costs nothing)."""
        if self.price_per_hour is None:
            return None
        return self.price_per_hour * self.instance_count

    @property
    def age(self) -> str:
        if self.created is None:
            return "?"
        seconds = max(0, int((datetime.now(UTC) - self.created).total_seconds()))
        days, rest = divmod(seconds, 86400)
        hours, rest = divmod(rest, 3600)
        minutes = rest // 60
        if days:
            return f"{days}d {hours}h"
        if hours:
            return f"{hours}h {minutes}m"
        return f"{minutes}m"

    def row(self) -> list[str]:
        """name, status, mode, instance type, instances, age, $/h — the table the CLI and the UI show."""
        cost = self.estimated_cost_per_hour
        return [
            self.name,
            self.status,
            self.mode,
            self.instance_type,
            str(self.instance_count),
            self.age,
            "?" if cost is None else f"${cost:.2f}",
        ]


TABLE_HEADERS = ["name", "status", "mode", "instance type", "instances", "age", "est. $/h"]


def _tag_dict(tags: list[dict[str, str]]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in tags}


def _endpoint_info(sm: Any, name: str, tags: dict[str, str] | None = None) -> EndpointInfo:
    """Describe the endpoint and its config (instance type and async paths live on the config)."""
    from botocore.exceptions import ClientError

    try:
        endpoint = sm.describe_endpoint(EndpointName=name)
    except ClientError as exc:
        if _is_not_found(exc):
            raise EndpointNotFound("status", f"no endpoint named {name!r}") from exc
        raise
    config_name = endpoint.get("EndpointConfigName", "")
    instance_type, model_names, async_config = "?", [], None
    try:
        config = sm.describe_endpoint_config(EndpointConfigName=config_name)
        variants = config.get("ProductionVariants", [])
        if variants:
            instance_type = variants[0].get("InstanceType", "?")
        model_names = [v["ModelName"] for v in variants if v.get("ModelName")]
        async_config = config.get("AsyncInferenceConfig")
    except ClientError as exc:
        if not _is_not_found(exc):
            raise
    if tags is None:
        tags = _tag_dict(sm.list_tags(ResourceArn=endpoint["EndpointArn"]).get("Tags", []))
    count = sum(int(v.get("CurrentInstanceCount", 0) or 0) for v in endpoint.get("ProductionVariants", []))
    output = (async_config or {}).get("OutputConfig", {})
    return EndpointInfo(
        name=name,
        status=endpoint["EndpointStatus"],
        mode=tags.get(TAG_MODE) or ("async" if async_config else "realtime"),
        instance_type=instance_type,
        instance_count=count,
        created=endpoint.get("CreationTime"),
        price_per_hour=price_per_hour(instance_type),
        failure_reason=endpoint.get("FailureReason"),
        endpoint_config_name=config_name,
        model_names=model_names,
        async_output_path=output.get("S3OutputPath"),
        async_failure_path=output.get("S3FailurePath"),
    )


def status(name: str, region: str | None = None, *, session: Any = None) -> EndpointInfo:
    """Status of one endpoint, with its autoscaling range. Raises EndpointNotFound."""
    region = resolve_region(region)
    session = session or aws_session(region)
    info = _endpoint_info(aws_client("sagemaker", region, session=session), name)
    targets = aws_client("application-autoscaling", region, session=session).describe_scalable_targets(
        ServiceNamespace="sagemaker", ResourceIds=[_resource_id(name)], ScalableDimension=SCALABLE_DIMENSION
    )["ScalableTargets"]
    if targets:
        info.min_instances, info.max_instances = targets[0]["MinCapacity"], targets[0]["MaxCapacity"]
    return info


def list_endpoints(region: str | None = None, *, session: Any = None, quick: bool = False) -> list[EndpointInfo]:
    """Endpoints tagged sd-studio=true in the region, newest first."""
    region = resolve_region(region)
    session = session or aws_session(region)
    sm = aws_client("sagemaker", region, session=session, quick=quick)
    found = []
    for page in sm.get_paginator("list_endpoints").paginate(SortBy="CreationTime", SortOrder="Descending"):
        for summary in page["Endpoints"]:
            tags = _tag_dict(sm.list_tags(ResourceArn=summary["EndpointArn"]).get("Tags", []))
            if tags.get(TAG_KEY) != "true":
                continue
            try:
                found.append(_endpoint_info(sm, summary["EndpointName"], tags))
            except EndpointNotFound:
                continue  # deleted between list and describe
    return found


def running_endpoints_warning(region: str | None = None) -> str | None:
    """A start-up warning naming sd-studio endpoints that exist (and may cost money), or None.

    Never raises and never waits long: no region/credentials or an unreachable API just means no warning.
    """
    try:
        session = aws_session(region)
        region = region or session.region_name
        if not region or session.get_credentials() is None:
            return None
        endpoints = [e for e in list_endpoints(region, session=session, quick=True) if e.status != "Deleting"]
    except Exception as exc:  # noqa: BLE001 - a warning must never stop the studio from starting
        log.debug("could not check for running SageMaker endpoints: %s", exc)
        return None
    if not endpoints:
        return None
    costs = [e.estimated_cost_per_hour or 0.0 for e in endpoints]
    parts = [f"{e.name} ({e.status}, {e.instance_type} x{e.instance_count}, {e.mode})" for e in endpoints]
    return (
        f"{len(endpoints)} SageMaker endpoint(s) deployed by SD Studio exist in {region}: {', '.join(parts)}; "
        f"about ${sum(costs):.2f}/h right now. Delete them in Settings → Deploy (or `python -m studio.deploy delete "
        "--name NAME`) when you no longer need them."
    )


# ----------------------------------------------------------------------------------------------------------------------
# Delete


@dataclass
class DeleteReport:
    """What `delete()` removed, what was already gone, and anything still left (should be empty)."""

    name: str
    deleted: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.leftovers and not self.errors

    def summary(self) -> str:
        if self.ok and not self.deleted:
            return f"{self.name}: nothing to delete (already gone)"
        lines = [f"{self.name}: deleted {len(self.deleted)} resource(s)"]
        lines += [f"  - {d}" for d in self.deleted]
        if self.errors:
            lines += [f"  ERROR {e}" for e in self.errors]
        if self.leftovers:
            lines += [f"  STILL PRESENT {x}" for x in self.leftovers]
        else:
            lines.append("  verified: nothing is left")
        return "\n".join(lines)


def _owned(sm: Any, arn: str, name: str) -> bool:
    """True when the resource carries our tags for endpoint `name`."""
    tags = _tag_dict(sm.list_tags(ResourceArn=arn).get("Tags", []))
    return tags.get(TAG_KEY) == "true" and tags.get(TAG_ENDPOINT) == name


def _find_owned(sm: Any, name: str) -> tuple[list[str], list[str]]:
    """Configs and models tagged for endpoint `name` (also orphans from a half-finished run)."""
    configs, models = [], []
    stem = _name_stem(name)
    for page in sm.get_paginator("list_endpoint_configs").paginate(NameContains=stem):
        configs += [
            c["EndpointConfigName"] for c in page["EndpointConfigs"] if _owned(sm, c["EndpointConfigArn"], name)
        ]
    for page in sm.get_paginator("list_models").paginate(NameContains=stem):
        models += [m["ModelName"] for m in page["Models"] if _owned(sm, m["ModelArn"], name)]
    return configs, models


def _endpoint_alarms(cloudwatch: Any, name: str) -> list[str]:
    """Alarms on this endpoint's AWS/SageMaker metrics that sd-studio caused: the ones it tagged for the endpoint,
    and the TargetTracking-* alarms Application Auto Scaling made for its policies. Alarms a user made are kept."""
    names = []
    for page in cloudwatch.get_paginator("describe_alarms").paginate(AlarmTypes=["MetricAlarm"]):
        for alarm in page["MetricAlarms"]:
            dims = {d["Name"]: d["Value"] for d in alarm.get("Dimensions", [])}
            if alarm.get("Namespace") != "AWS/SageMaker" or dims.get("EndpointName") != name:
                continue
            if alarm["AlarmName"].startswith(f"TargetTracking-{_resource_id(name)}-"):
                names.append(alarm["AlarmName"])
                continue
            tags = cloudwatch.list_tags_for_resource(ResourceARN=alarm["AlarmArn"]).get("Tags", [])
            if _tag_dict(tags).get(TAG_KEY) == "true" and _tag_dict(tags).get(TAG_ENDPOINT) == name:
                names.append(alarm["AlarmName"])
    return names


def delete(
    name: str,
    delete_artifacts: bool = False,
    region: str | None = None,
    progress: ProgressCallback | None = None,
    *,
    poll_seconds: float = 10.0,
    session: Any = None,
) -> DeleteReport:
    """Remove the endpoint and everything sd-studio created for it, in order, then verify nothing is left.

    Order: scalable target, scaling policies, alarms, endpoint (waiting until gone), endpoint config(s), model(s),
    and with `delete_artifacts` the uploaded model files (async outputs are the user's images and are kept).
    Idempotent: what is already gone is skipped. Resources not tagged sd-studio are left alone; an endpoint without
    the tag is refused (DeployError) so the studio never deletes someone else's endpoint.
    """
    from botocore.exceptions import ClientError

    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise PlanError("name", f"{name!r} is not a valid SageMaker endpoint name")
    region = resolve_region(region)
    session = session or aws_session(region)
    sm = aws_client("sagemaker", region, session=session)
    autoscaling = aws_client("application-autoscaling", region, session=session)
    cloudwatch = aws_client("cloudwatch", region, session=session)
    s3 = aws_client("s3", region, session=session)
    report = DeleteReport(name)

    def say(message: str) -> None:
        log.info("delete %s: %s", name, message)
        if progress is not None:
            progress("delete", message)

    def attempt(description: str, action: Callable[[], Any]) -> None:
        try:
            action()
        except ClientError as exc:
            if _is_not_found(exc):
                return
            report.errors.append(f"{description}: {_error_code(exc)}: {_error_message(exc)}")
            say(f"could not delete {description}: {_error_message(exc)}")
            return
        report.deleted.append(description)
        say(f"deleted {description}")

    # What belongs to the endpoint: its config and models, plus tagged orphans of earlier runs.
    config_names, model_names = _find_owned(sm, name)
    try:
        endpoint = sm.describe_endpoint(EndpointName=name)
    except ClientError as exc:
        if not _is_not_found(exc):
            raise
        endpoint_exists = False
    else:
        endpoint_exists = True
        if _tag_dict(sm.list_tags(ResourceArn=endpoint["EndpointArn"]).get("Tags", [])).get(TAG_KEY) != "true":
            raise DeployError(
                "delete",
                f"endpoint {name!r} was not deployed by SD Studio (no sd-studio tag); "
                "not deleting it — use the AWS console or CLI if you really mean to",
            )
        config_names = list(dict.fromkeys([endpoint["EndpointConfigName"], *config_names]))
    for config_name in config_names:
        try:
            config = sm.describe_endpoint_config(EndpointConfigName=config_name)
        except ClientError as exc:
            if _is_not_found(exc):
                continue
            raise
        if not _owned(sm, config["EndpointConfigArn"], name):
            continue  # a config someone else made for this endpoint: not ours to delete
        for variant in config.get("ProductionVariants", []):
            if variant.get("ModelName") and variant["ModelName"] not in model_names:
                try:
                    model = sm.describe_model(ModelName=variant["ModelName"])
                except ClientError as exc:
                    if _is_not_found(exc):
                        continue
                    raise
                if _owned(sm, model["ModelArn"], name):
                    model_names.append(variant["ModelName"])
    config_names = [c for c in config_names if _config_is_owned(sm, c, name)]
    artifacts = []
    for model_name in model_names:
        try:
            arn = sm.describe_model(ModelName=model_name)["ModelArn"]
            uri = _tag_dict(sm.list_tags(ResourceArn=arn).get("Tags", [])).get(TAG_ARTIFACTS)
            if uri:
                artifacts.append(uri)
        except ClientError as exc:
            if not _is_not_found(exc):
                raise

    resource_id = _resource_id(name)
    common = {"ServiceNamespace": "sagemaker", "ResourceId": resource_id, "ScalableDimension": SCALABLE_DIMENSION}
    targets = autoscaling.describe_scalable_targets(
        ServiceNamespace="sagemaker", ResourceIds=[resource_id], ScalableDimension=SCALABLE_DIMENSION
    )["ScalableTargets"]
    if targets:
        attempt(f"scalable target {resource_id}", lambda: autoscaling.deregister_scalable_target(**common))
    # Deregistering removes the policies on AWS; delete any that remain explicitly (and on emulators).
    for policy in _policies(autoscaling, resource_id):
        attempt(f"scaling policy {policy}", lambda p=policy: autoscaling.delete_scaling_policy(PolicyName=p, **common))
    alarms = _endpoint_alarms(cloudwatch, name)
    if alarms:
        attempt(f"alarm(s) {', '.join(alarms)}", lambda: cloudwatch.delete_alarms(AlarmNames=alarms))
    if endpoint_exists:
        say(f"deleting endpoint {name} and waiting until it is gone")
        attempt(f"endpoint {name}", lambda: _delete_endpoint_and_wait(sm, name, poll_seconds))
    for config_name in config_names:
        attempt(f"endpoint config {config_name}", lambda c=config_name: sm.delete_endpoint_config(EndpointConfigName=c))
    for model_name in model_names:
        attempt(f"model {model_name}", lambda m=model_name: sm.delete_model(ModelName=m))
    if delete_artifacts:
        for uri in artifacts:
            bucket, _, prefix = uri[len("s3://") :].partition("/")
            keys = _s3_keys(s3, bucket, prefix)
            if keys:
                attempt(f"{len(keys)} artifact file(s) under {uri}", lambda b=bucket, k=keys: _delete_keys(s3, b, k))

    # Verify.
    if _exists(lambda: sm.describe_endpoint(EndpointName=name)):
        report.leftovers.append(f"endpoint {name}")
    report.leftovers += [
        f"endpoint config {c}"
        for c in config_names
        if _exists(lambda c=c: sm.describe_endpoint_config(EndpointConfigName=c))
    ]
    report.leftovers += [f"model {m}" for m in model_names if _exists(lambda m=m: sm.describe_model(ModelName=m))]
    orphan_configs, orphan_models = _find_owned(sm, name)
    report.leftovers += [
        f"endpoint config {c}" for c in orphan_configs if f"endpoint config {c}" not in report.leftovers
    ]
    report.leftovers += [f"model {m}" for m in orphan_models if f"model {m}" not in report.leftovers]
    if autoscaling.describe_scalable_targets(
        ServiceNamespace="sagemaker", ResourceIds=[resource_id], ScalableDimension=SCALABLE_DIMENSION
    )["ScalableTargets"]:
        report.leftovers.append(f"scalable target {resource_id}")
    report.leftovers += [f"scaling policy {p}" for p in _policies(autoscaling, resource_id)]
    report.leftovers += [f"alarm {a}" for a in _endpoint_alarms(cloudwatch, name)]
    if delete_artifacts:
        for uri in artifacts:
            bucket, _, prefix = uri[len("s3://") :].partition("/")
            if _s3_keys(s3, bucket, prefix):
                report.leftovers.append(f"artifacts under {uri}")
    say("verified: nothing is left" if report.ok else f"left over: {', '.join(report.leftovers + report.errors)}")
    return report


def _config_is_owned(sm: Any, config_name: str, name: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        arn = sm.describe_endpoint_config(EndpointConfigName=config_name)["EndpointConfigArn"]
    except ClientError as exc:
        if _is_not_found(exc):
            return False
        raise
    return _owned(sm, arn, name)


def _policies(autoscaling: Any, resource_id: str) -> list[str]:
    policies = autoscaling.describe_scaling_policies(
        ServiceNamespace="sagemaker", ResourceId=resource_id, ScalableDimension=SCALABLE_DIMENSION
    )["ScalingPolicies"]
    # Some emulators match ResourceId loosely; keep only exact matches.
    return [p["PolicyName"] for p in policies if p.get("ResourceId") == resource_id]


def _exists(describe: Callable[[], Any]) -> bool:
    from botocore.exceptions import ClientError

    try:
        describe()
    except ClientError as exc:
        if _is_not_found(exc):
            return False
        raise
    return True


def _s3_keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    from botocore.exceptions import ClientError

    keys = []
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys += [obj["Key"] for obj in page.get("Contents", [])]
    except ClientError as exc:
        if _is_not_found(exc):
            return []
        raise
    return keys


def _delete_keys(s3: Any, bucket: str, keys: list[str]) -> None:
    for start in range(0, len(keys), 1000):
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[start : start + 1000]]})


# ----------------------------------------------------------------------------------------------------------------------
# CLI


def _print(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _format_table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=False)).rstrip() for row in [headers, *rows]]
    return "\n".join(lines)


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        _print(f"{question} [y/N] (no terminal to ask; pass --yes to confirm)")
        return False
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m studio.deploy", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    create_p = sub.add_parser("create", help="deploy a model to a new SageMaker endpoint")
    create_p.add_argument("--name", required=True, help="endpoint name (letters, digits, hyphens; max 63)")
    create_p.add_argument("--model", required=True, help="local folder/file, s3://…/model.tar.gz, hub id, or 'demo'")
    create_p.add_argument(
        "--instance-type",
        default=DEFAULT_INSTANCE_TYPE,
        metavar="TYPE",
        help=f"GPU instance type (default {DEFAULT_INSTANCE_TYPE}): {', '.join(INSTANCE_PRICES)}",
    )
    create_p.add_argument("--mode", choices=MODES, default="realtime", help="realtime (default) or async")
    create_p.add_argument("--min-instances", type=int, default=None, help="default 1 (realtime) / 0 (async)")
    create_p.add_argument("--max-instances", type=int, default=1)
    create_p.add_argument("--bucket", help="S3 bucket (default sagemaker-{region}-{account}, created if missing)")
    create_p.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"S3 key prefix (default {DEFAULT_PREFIX})")
    create_p.add_argument("--role", help="SageMaker execution role ARN (discovered on a SageMaker notebook)")
    create_p.add_argument("--image", help="container image URI (default: the AWS PyTorch inference DLC)")
    create_p.add_argument("--region")
    create_p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    create_p.add_argument("--poll-seconds", type=float, default=15.0, help=argparse.SUPPRESS)

    status_p = sub.add_parser("status", help="show one endpoint")
    status_p.add_argument("--name", required=True)
    status_p.add_argument("--region")

    list_p = sub.add_parser("list", help="list endpoints deployed by SD Studio")
    list_p.add_argument("--region")

    delete_p = sub.add_parser("delete", help="delete an endpoint and everything created for it")
    delete_p.add_argument("--name", required=True)
    delete_p.add_argument("--region")
    delete_p.add_argument("--delete-artifacts", action="store_true", help="also delete the uploaded model files")
    delete_p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    delete_p.add_argument("--poll-seconds", type=float, default=10.0, help=argparse.SUPPRESS)

    package_p = sub.add_parser("package", help="only write model.tar.gz (no AWS calls)")
    package_p.add_argument("--model", required=True)
    package_p.add_argument("--out", default="model.tar.gz")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 1 failure, 2 usage, 3 not confirmed)."""
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        if args.command == "create":
            plan = DeployPlan(
                name=args.name,
                model=args.model,
                instance_type=args.instance_type,
                mode=args.mode,
                min_instances=args.min_instances,
                max_instances=args.max_instances,
                bucket=args.bucket,
                prefix=args.prefix,
                role=args.role,
                image=args.image,
                region=args.region,
            )
            plan = plan.validate()
            _print(f"Deploying {plan.model} as {plan.mode} endpoint {plan.name!r} in {plan.region}")
            _print(describe_price(plan.instance_type, plan.mode, plan.min_instances, plan.max_instances))
            if not args.yes and not _confirm("Create it?"):
                _print("Not confirmed; nothing was created.")
                return 3
            result = create(plan, lambda step, message: _print(f"[{step}] {message}"), poll_seconds=args.poll_seconds)
            _print(
                f"Endpoint {result.endpoint_name} is ready. Use it with: --backend sagemaker --endpoint "
                f"{result.endpoint_name}"
            )
        elif args.command == "status":
            info = status(args.name, args.region)
            _print(_format_table([info.row()], TABLE_HEADERS))
            _print(
                f"config {info.endpoint_config_name}; model(s) {', '.join(info.model_names) or '-'}; "
                f"autoscaling {info.min_instances}-{info.max_instances}"
            )
            if info.async_output_path:
                _print(f"async output {info.async_output_path}; failures {info.async_failure_path}")
            if info.failure_reason:
                _print(f"FailureReason: {info.failure_reason}")
        elif args.command == "list":
            endpoints = list_endpoints(args.region)
            if not endpoints:
                _print("No SD Studio endpoints.")
            else:
                _print(_format_table([e.row() for e in endpoints], TABLE_HEADERS))
                total = sum(e.estimated_cost_per_hour or 0 for e in endpoints)
                _print(f"Estimated total ${total:.2f}/h ({PRICE_NOTE}).")
        elif args.command == "delete":
            if not args.yes and not _confirm(f"Delete endpoint {args.name!r} and everything created for it?"):
                _print("Not confirmed; nothing was deleted.")
                return 3
            report = delete(
                args.name,
                args.delete_artifacts,
                args.region,
                lambda step, message: _print(f"[{step}] {message}"),
                poll_seconds=args.poll_seconds,
            )
            _print(report.summary())
            return 0 if report.ok else 1
        elif args.command == "package":
            plan = DeployPlan(name="package", model=args.model)
            plan._validate_offline()
            path = package_model(plan, args.out)
            _print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    except DeployError as exc:
        _print(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        _print("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
