"""What to deploy: `DeployPlan`, its validation, the execution-role discovery and the deploy errors.

`DeployPlan.validate()` makes only read-only AWS calls and raises `PlanError` naming the field before anything is
created; it returns a copy with region, account, bucket, role and image filled in.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from studio import aws, config
from studio.deploy.pricing import DEFAULT_INSTANCE_TYPE, INSTANCE_PRICES, default_image
from studio.models import CHECKPOINT_SUFFIXES, DEMO, ModelKind
from studio.types import RequestError

log = logging.getLogger(__name__)

MODES = ("realtime", "async")
DEFAULT_PREFIX = "sd-studio"
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")  # SageMaker endpoint/model/config names
HUB_ID = re.compile(r"^[\w-][\w.-]*/[\w.-]+$|^[\w-][\w.-]*$")  # Hugging Face "org/name" (or a bare name)
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
ROLE_ARN = re.compile(r"^arn:aws[\w-]*:iam::\d{12}:role/[\w+=,.@/-]+$")
IMAGE_URI = re.compile(r"^[\w.-]+(:\d+)?/[\w./-]+(:[\w.-]+|@sha256:[0-9a-f]{64})?$")
ASSUMED_ROLE_ARN = re.compile(r"^arn:(aws[\w-]*):sts::(\d{12}):assumed-role/([\w+=,.@-]+)/")

DLC_PYTHON = "3.12"  # the Python of the default PyTorch inference DLC (pytorch-inference:2.6.0-gpu-py312)
DLC_IMAGE_MARK = "/pytorch-inference:"  # an image URI with this is the AWS DLC; any other is the project's own
VERIFY_TIMEOUT_SECONDS = 900.0  # the smoke test: first answer of a cold endpoint (model load included)

S3_ARCHIVE = "s3-archive"
"""`DeployPlan.model_kind` of an s3:// model.tar.gz used as is: a packaging case of deploy, not a kind of model."""

PlanModelKind = ModelKind | Literal["s3-archive"]

ProgressCallback = Callable[[str, str], None]  # (step name, message): how create and delete report each step


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


def check_endpoint_name(name: object) -> str:
    """`name` when it is a valid SageMaker endpoint name, else PlanError("name")."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise PlanError(
            "name",
            f"{name!r} is not a valid SageMaker endpoint name: 1-63 letters, digits and hyphens, "
            "starting and ending with a letter or digit (pattern ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$)",
        )
    return name


def resolve_region(region: str | None = None) -> str:
    """The region to use: explicit, else the session's (AWS_REGION / AWS_DEFAULT_REGION / profile)."""
    resolved = region or aws.new_session().region_name
    if not resolved:
        raise PlanError(
            "region",
            "no AWS region configured; pass --region (e.g. us-east-1) or set AWS_REGION / AWS_DEFAULT_REGION",
        )
    return resolved


@dataclass
class DeployPlan:
    """Everything `create()` needs. `validate()` fills in region, account, bucket, role and image.

    `model` is a local diffusers folder or single checkpoint file (packaged into model.tar.gz), "demo" (the built-in
    tiny demo model), an `s3://` model.tar.gz used as is (it must carry code/ for the DLC image), or a hub id
    (downloaded by the container at start; only our code is packaged). `loras` and `vaes` (files, or names in
    `models_dir`/Lora and /VAE) go into the package as Lora/<file> and VAE/<file>, where the endpoint's prompts
    (`<lora:name:w>`) and requests (`vae`) find them by the same names.
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
    # LoRA and VAE files to carry (Lora/ and VAE/ in model.tar.gz): a file path, or a name found in models_dir.
    loras: list[str] = field(default_factory=list)
    vaes: list[str] = field(default_factory=list)
    models_dir: Path = Path("models")  # where names given in loras/vaes are looked up (the studio's --models-dir)
    # Self-contained package: the container's wheels in code/wheels/ (for `wheels_python`), installed with no index.
    vendor_wheels: bool = False
    wheels_python: str = DLC_PYTHON
    network_isolation: bool = False  # EnableNetworkIsolation: the container gets no network (implies vendor_wheels)
    # After InService: one tiny request must come back with an image (the smoke test), else roll back.
    verify: bool = True
    verify_timeout_seconds: float = VERIFY_TIMEOUT_SECONDS
    keep_on_failure: bool = False  # a failed create leaves what it made (to inspect it); delete it afterwards

    @property
    def own_image(self) -> bool:
        """True when `image` is the project's own serving image (Dockerfile: `serve`), not the AWS PyTorch DLC."""
        return bool(self.image) and DLC_IMAGE_MARK not in (self.image or "")

    @property
    def gpu(self) -> bool:
        """True for GPU (and accelerator) instance types: their package leaves out the CPU engine (openvino)."""
        return not self.instance_type.startswith(("ml.c", "ml.m", "ml.r", "ml.t"))

    @property
    def vendors_wheels(self) -> bool:
        """Whether the package carries its wheels: asked for, or implied by network isolation on the DLC."""
        return not self.own_image and (self.vendor_wheels or self.network_isolation)

    @property
    def model_kind(self) -> PlanModelKind:
        """The studio's model kind of `model`, or S3_ARCHIVE for a pre-packaged s3:// model.tar.gz."""
        if self.model.startswith("s3://"):
            return S3_ARCHIVE
        if self.model == DEMO:
            return ModelKind.DEMO
        path = Path(self.model).expanduser()
        if path.exists():
            return ModelKind.DIFFUSERS if path.is_dir() else ModelKind.SINGLE_FILE
        return ModelKind.HUB

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
        self.validate_offline()
        if not check_aws:
            return self
        return _validate_aws(self, session)

    def validate_offline(self) -> None:
        """The checks that need no AWS call (the CLI's `package` makes only these)."""
        check_endpoint_name(self.name)
        self._check_capacity()
        self._check_model()
        self._check_locations()
        self._check_tuning()
        self._check_isolation()
        self.extra_files()

    def _check_capacity(self) -> None:
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

    def _check_model(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise PlanError("model", "is empty; give a local folder/file, s3://bucket/key, a hub id or 'demo'")
        kind = self.model_kind
        if kind == S3_ARCHIVE:
            try:
                aws.parse_s3_uri(self.model, "model")
            except RequestError:
                raise PlanError("model", f"{self.model!r} is not an s3://bucket/key URI") from None
        elif kind is ModelKind.HUB and (self.model.startswith((".", "/", "~")) or not HUB_ID.match(self.model)):
            raise PlanError("model", f"{self.model!r} does not exist locally and is not a hub id (org/name)")
        elif kind is ModelKind.DIFFUSERS and not (Path(self.model).expanduser() / "model_index.json").is_file():
            raise PlanError("model", f"{self.model!r} is a folder without model_index.json (not a diffusers model)")
        elif kind is ModelKind.SINGLE_FILE and Path(self.model).suffix not in CHECKPOINT_SUFFIXES:
            raise PlanError("model", f"{self.model!r} is not a .safetensors or .ckpt checkpoint")

    def _check_locations(self) -> None:
        if self.bucket is not None and not BUCKET_NAME.match(self.bucket):
            raise PlanError("bucket", f"{self.bucket!r} is not a valid S3 bucket name")
        if not re.match(r"^[\w!.*'()/-]*$", self.prefix or ""):
            raise PlanError("prefix", f"{self.prefix!r} has characters S3 keys should not use")
        if self.role is not None and not ROLE_ARN.match(self.role):
            raise PlanError("role", f"{self.role!r} is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)")
        if self.image is not None and not IMAGE_URI.match(self.image):
            raise PlanError("image", f"{self.image!r} is not a container image URI")

    def _check_tuning(self) -> None:
        for name in ("target_invocations_per_instance", "target_backlog_per_instance"):
            if not getattr(self, name) > 0:
                raise PlanError(name, f"must be greater than 0, got {getattr(self, name)!r}")
        if not 1 <= self.max_concurrent_invocations <= 1000:
            raise PlanError("max_concurrent_invocations", f"must be 1-1000, got {self.max_concurrent_invocations}")
        if not 60 <= self.startup_timeout_seconds <= 3600:
            raise PlanError("startup_timeout_seconds", f"must be 60-3600, got {self.startup_timeout_seconds}")

    def _check_isolation(self) -> None:
        if not re.match(r"^3\.\d+$", str(self.wheels_python)):
            raise PlanError("wheels_python", f"must be a Python version like 3.12, got {self.wheels_python!r}")
        if not 1 <= self.verify_timeout_seconds <= 3600:
            raise PlanError("verify_timeout_seconds", f"must be 1-3600 seconds, got {self.verify_timeout_seconds}")
        if self.network_isolation and self.model_kind is ModelKind.HUB:
            raise PlanError(
                "network_isolation",
                f"the hub model {self.model!r} is downloaded by the container at start, which network isolation "
                "forbids; download it and deploy the local folder instead",
            )

    def extra_files(self) -> list[tuple[Path, str]]:
        """(file, name in the archive) of each LoRA and VAE to package; PlanError("lora"/"vae") for one that is
        neither a file of a usable kind nor a name found in models_dir, or when the model is an s3:// archive."""
        from studio.models import lora, vae

        found: list[tuple[Path, str]] = []
        for kind, values in (
            (
                _ExtraKind("lora", "LoRA", lora.LORA_DIR, lora.LORA_SUFFIXES, lora.discover_loras, lora.find_lora),
                self.loras,
            ),
            (_ExtraKind("vae", "VAE", vae.VAE_DIR, vae.VAE_SUFFIXES, vae.discover_vaes, vae.find_vae), self.vaes),
        ):
            if values and self.model_kind == S3_ARCHIVE:
                raise PlanError(
                    kind.field,
                    f"files cannot be added to an s3:// archive; put them in it under {kind.folder}/ "
                    "(and set STUDIO_MODELS_DIR=/opt/ml/model)",
                )
            for value in values:
                path, relative = kind.resolve(value, self.models_dir)
                arcname = f"{kind.folder}/{relative}"
                if arcname in (name for _, name in found):
                    raise PlanError(kind.field, f"{value!r} is given twice (both would be {arcname})")
                found.append((path, arcname))
        return found


@dataclass(frozen=True)
class _ExtraKind:
    """A kind of file a package can carry next to the model: LoRAs in Lora/, VAEs in VAE/ (A1111's folders)."""

    field: str  # the DeployPlan field and CLI option (--lora, --vae)
    what: str
    folder: str
    suffixes: tuple[str, ...]
    discover: Callable[[Path], list[Any]]
    find: Callable[[str, list[Any]], Any]

    def resolve(self, value: str, models_dir: Path) -> tuple[Path, str]:
        """(file, its path under the folder in the archive) for a --lora/--vae value: a file path (packaged by its
        file name), else a name found in models_dir/<folder> (packaged at the same path under the folder, so the
        endpoint finds it by the same name)."""
        path = Path(value).expanduser()
        if path.is_file():
            if path.suffix.lower() not in self.suffixes:
                raise PlanError(self.field, f"{value!r} is not a {self.what} file ({', '.join(self.suffixes)})")
            return path.resolve(), path.name
        root = Path(models_dir) / self.folder
        available = self.discover(Path(models_dir))
        match = self.find(value, available) if value else None
        if match is None:
            names = ", ".join(item.name for item in available) or "none"
            raise PlanError(self.field, f"{value!r} is neither a file nor a {self.what} in {root} (found: {names})")
        return match.path.resolve(), match.path.relative_to(root).as_posix()


def _validate_aws(plan: DeployPlan, session: Any) -> DeployPlan:
    """The read-only AWS checks of `DeployPlan.validate`; returns the filled-in copy."""
    region = resolve_region(plan.region)
    session = session or aws.new_session(region)
    known = {r for p in session.get_available_partitions() for r in session.get_available_regions("sagemaker", p)}
    if known and region not in known:
        raise PlanError("region", f"{region!r} is not a SageMaker region")
    identity = _caller_identity(session, region)
    account = identity["Account"]
    filled = dataclasses.replace(plan, region=region, account=account)
    filled.bucket = plan.bucket or f"sagemaker-{region}-{account}"
    filled.image = plan.image or default_image(region)
    filled.role = plan.role or discover_role(session=session, region=region, caller_arn=identity.get("Arn", ""))
    if filled.role is None:
        raise PlanError(
            "role",
            "no execution role given and none could be discovered (not on a SageMaker notebook); pass --role "
            "arn:aws:iam::<account>:role/<a role SageMaker can assume, with S3 and ECR read access>",
        )
    _check_name_is_free(session, region, plan.name)
    if plan.model_kind != S3_ARCHIVE or plan.mode == "async":
        _check_bucket_is_usable(session, region, filled.bucket)
    return filled


def _caller_identity(session: Any, region: str) -> dict[str, Any]:
    from botocore.exceptions import BotoCoreError, ClientError

    if session.get_credentials() is None:
        raise PlanError(
            "credentials",
            "no AWS credentials found (environment, ~/.aws/credentials, AWS_PROFILE/SSO or an instance role); "
            "configure them, e.g. with `aws configure`",
        )
    try:
        return aws.client("sts", region, session=session).get_caller_identity()
    except ClientError as exc:
        raise PlanError("credentials", f"AWS rejected the credentials ({aws.error_code(exc)})") from exc
    except BotoCoreError as exc:
        raise PlanError("credentials", f"could not check the credentials: {type(exc).__name__}: {exc}") from exc


def _check_name_is_free(session: Any, region: str, name: str) -> None:
    from botocore.exceptions import ClientError

    try:
        existing = aws.client("sagemaker", region, session=session).describe_endpoint(EndpointName=name)
    except ClientError as exc:
        if not aws.is_not_found(exc):
            raise PlanError("name", f"could not check for an existing endpoint: {aws.error_message(exc)}") from exc
        return
    raise PlanError(
        "name",
        f"an endpoint named {name!r} already exists ({existing['EndpointStatus']}); "
        "delete it first or choose another name",
    )


def _check_bucket_is_usable(session: Any, region: str, bucket: str) -> None:
    """The bucket exists and is ours to use, or does not exist yet (create makes it)."""
    from botocore.exceptions import ClientError

    try:
        aws.client("s3", region, session=session).head_bucket(Bucket=bucket)
    except ClientError as exc:
        if not aws.is_not_found(exc):
            raise PlanError(
                "bucket", f"bucket {bucket!r} exists but is not accessible ({aws.error_code(exc)})"
            ) from exc


def discover_role(*, session: Any = None, region: str | None = None, caller_arn: str = "") -> str | None:
    """The execution role of the SageMaker notebook/Studio we run on, or None when not on one.

    Notebook instances write /opt/ml/metadata/resource-metadata.json (ResourceName → describe_notebook_instance);
    otherwise, when the caller is an assumed role that SageMaker may assume (its trust policy names
    sagemaker.amazonaws.com, as notebook and Studio execution roles do), that role's IAM ARN is used.
    """
    session = session or aws.new_session(region)
    return _notebook_role(session, region) or _assumed_sagemaker_role(session, region, caller_arn)


def _notebook_role(session: Any, region: str | None) -> str | None:
    """The role of the notebook instance described by the SageMaker metadata file, if there is one."""
    from botocore.exceptions import BotoCoreError, ClientError

    metadata = config.sagemaker_metadata_file()
    if not metadata.is_file():
        return None
    try:
        info = json.loads(metadata.read_text())
        name = info.get("ResourceName")
        if name and ":notebook-instance/" in info.get("ResourceArn", ""):
            sm = aws.client("sagemaker", region, session=session)
            role = sm.describe_notebook_instance(NotebookInstanceName=name)["RoleArn"]
            log.info("using the notebook instance's execution role %s", role)
            return role
    except (OSError, ValueError, KeyError, ClientError, BotoCoreError) as exc:
        log.warning("could not read the notebook's role from %s: %s", metadata, exc)
    return None


def _assumed_sagemaker_role(session: Any, region: str | None, caller_arn: str) -> str | None:
    """The IAM ARN of the caller's assumed role, when SageMaker may assume it too."""
    from botocore.exceptions import BotoCoreError, ClientError

    match = ASSUMED_ROLE_ARN.match(caller_arn or "")
    if not match:
        return None
    role_name = match.group(3)
    try:
        role = aws.client("iam", region, session=session).get_role(RoleName=role_name)["Role"]
    except (ClientError, BotoCoreError) as exc:
        log.info("cannot read role %s (%s); not using it as the execution role", role_name, aws.error_code(exc))
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
