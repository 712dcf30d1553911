"""Create an endpoint as explicit steps (CREATE_STEPS), each reported through a progress callback.

`create()` validates the plan, then runs one function per step. Each step pushes an undo action for what it
created onto the run's `Rollback`; when a later step fails (or the run is interrupted), everything this run created
is removed again, newest first (unless the plan says keep_on_failure), and DeployError names the failed step.

The last step, "verify", is the smoke test (studio.deploy.verify): one tiny request must come back with an image
before the endpoint is reported ready; its failure shows the container's last CloudWatch log lines and rolls back
like any other step. `plan.verify=False` (`--skip-verify`) skips it with a warning (for emulators such as moto,
whose invoke answers are canned).
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio import aws
from studio.deploy.autoscaling import configure_autoscaling
from studio.deploy.delete import delete_endpoint_and_wait
from studio.deploy.package import model_environment, package_model
from studio.deploy.plan import S3_ARCHIVE, DeployError, DeployPlan, ProgressCallback, resolve_region
from studio.deploy.resources import TAG_ARTIFACTS, TAG_KEY, VARIANT, resource_name, s3_join, stamp, tags
from studio.deploy.verify import container_logs, log_group, verify_endpoint
from studio.models import ModelKind

log = logging.getLogger(__name__)


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
    verified: bool = False  # the smoke test got an image back (False: skipped)


class Rollback:
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
                if aws.is_not_found(exc):
                    self.progress("rollback", f"{description} was already gone")
                    continue
                log.exception("rollback of %s failed", description)
                self.progress("rollback", f"could NOT remove {description}: {aws.error_message(exc)}")
                failed.append(description)
        self.actions.clear()
        return failed


@dataclass
class CreateRun:
    """The state one `create()` run hands from step to step."""

    plan: DeployPlan  # validated: region, account, bucket, role and image are filled in
    session: Any
    say: ProgressCallback
    rollback: Rollback
    stamp: str  # the run's UTC time: in model/config names and S3 keys
    workdir: Path
    poll_seconds: float
    timeout_seconds: float
    tarball: Path | None = None  # set by the package step (None: nothing to upload)
    result: DeployResult = field(init=False)

    def __post_init__(self) -> None:
        plan, name = self.plan, resource_name(self.plan.name, self.stamp)
        archive = plan.model_kind == S3_ARCHIVE
        self.result = DeployResult(
            endpoint_name=plan.name,
            model_name=name,
            endpoint_config_name=name,
            model_data_url=plan.model if archive else f"s3://{self.bucket}/{self.run_prefix}/model.tar.gz",
            mode=plan.mode,
            instance_type=plan.instance_type,
            region=self.region,
        )

    @property
    def region(self) -> str:
        return self.plan.region or ""

    @property
    def bucket(self) -> str:
        return self.plan.bucket or ""

    @property
    def run_prefix(self) -> str:
        """Where this run's files go: {prefix}/{endpoint}/{stamp}."""
        return s3_join(self.plan.prefix, self.plan.name, self.stamp)

    @property
    def endpoint_prefix(self) -> str:
        """Where the endpoint's async outputs go: {prefix}/{endpoint}."""
        return s3_join(self.plan.prefix, self.plan.name)

    def client(self, service: str) -> Any:
        return aws.client(service, self.region, session=self.session)


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

    def say(step: str, message: str) -> None:
        log.info("%s: %s", step, message)
        if progress is not None:
            progress(step, message)

    plan, session = _validate(plan, session, say)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sd-studio-deploy-") as tmp:
        run = CreateRun(plan, session, say, Rollback(say), stamp(), Path(tmp), poll_seconds, timeout_seconds)
        _run_steps(run)
    elapsed = time.monotonic() - started
    if run.result.verified:
        say("done", f"endpoint {plan.name} is InService and generated the smoke-test image ({elapsed:.0f} s)")
    else:
        say("done", f"endpoint {plan.name} is InService, NOT verified ({elapsed:.0f} s)")
    return run.result


def _validate(plan: DeployPlan, session: Any, say: ProgressCallback) -> tuple[DeployPlan, Any]:
    """Step "validate": offline checks first, then the read-only AWS checks. Raises PlanError; creates nothing."""
    say("validate", f"checking the plan for {plan.name!r}")
    plan.validate_offline()
    session = session or aws.new_session(resolve_region(plan.region))
    plan = plan.validate(session=session)
    say("validate", f"region {plan.region or ''}, account {plan.account}, role {plan.role}, image {plan.image}")
    return plan, session


def _run_steps(run: CreateRun) -> None:
    """Run the steps after validation in order, timing each; on failure roll back and raise DeployError."""
    step = STEPS[0][0]
    try:
        for step, action in STEPS:
            started = time.monotonic()
            action(run)
            run.result.seconds[step] = time.monotonic() - started
    except BaseException as exc:
        error = _kept(run, step, exc) if run.plan.keep_on_failure else _roll_back(run, step, exc)
        if error is None:
            raise  # KeyboardInterrupt and the like: rolled back, now let it through unchanged
        raise error from exc


def _failure_message(step: str, exc: BaseException) -> str | None:
    """The user's message for a failed step (None: not an error to report, e.g. KeyboardInterrupt)."""
    from botocore.exceptions import ClientError

    if isinstance(exc, DeployError):
        return exc.message if exc.step == step else str(exc)
    if isinstance(exc, ClientError):
        return f"{aws.error_code(exc)}: {aws.error_message(exc)}"
    if isinstance(exc, Exception):  # BotoCoreError, OSError, ... and bugs: still a clear, step-named error
        return f"{type(exc).__name__}: {exc}"
    return None


def _kept(run: CreateRun, step: str, exc: BaseException) -> DeployError | None:
    """keep_on_failure: nothing is rolled back; say what is left and how to remove it."""
    message = _failure_message(step, exc)
    kept = ", ".join(description for description, _ in run.rollback.actions) or "nothing"
    run.rollback.actions.clear()
    if message is None:
        return None
    hint = f"kept for inspection (--keep-on-failure): {kept}; remove it with python -m studio.deploy delete --name "
    run.say(step, f"FAILED: {message}")
    run.say(step, hint + run.plan.name)
    return DeployError(step, f"{message}\n  {hint}{run.plan.name}")


def _roll_back(run: CreateRun, step: str, exc: BaseException) -> DeployError | None:
    """Undo what the run created and say so; the DeployError to raise (None: re-raise `exc` unchanged)."""
    failed = run.rollback.run() if run.rollback.actions else []
    left = f"; could not remove: {', '.join(failed)}" if failed else ""
    message = _failure_message(step, exc)
    if message is None:
        return None
    run.say(step, f"FAILED: {message}" + (" (rolled back what this run created)" if not failed else left))
    return DeployError(step, message + left)


def _package(run: CreateRun) -> None:
    """Step "package": model.tar.gz with our code (and the model's files when local); skipped for s3:// data."""
    plan = run.plan
    if plan.model_kind == S3_ARCHIVE:
        run.say("package", f"skipped: using the model data {plan.model} as is")
        return
    what = {
        ModelKind.DIFFUSERS: plan.model,
        ModelKind.SINGLE_FILE: plan.model,
        ModelKind.DEMO: "the demo model",
        ModelKind.HUB: f"code only (hub model {plan.model})",
    }
    run.say("package", f"packaging {what[plan.model_kind]} into model.tar.gz")
    run.tarball = package_model(plan, run.workdir / "model.tar.gz")
    run.say("package", f"model.tar.gz is {run.tarball.stat().st_size / 1e6:.1f} MB")


def _upload(run: CreateRun) -> None:
    """Step "upload": the bucket (created private when missing) and model.tar.gz into it."""
    started = time.monotonic()
    s3 = run.client("s3")
    if run.tarball is not None or run.plan.mode == "async":  # async results go to the bucket too
        _ensure_bucket(s3, run.bucket, run.region, run.rollback, run.say)
    if run.tarball is None:
        run.say("upload", "skipped (nothing to upload)")
        return
    bucket, key = run.bucket, f"{run.run_prefix}/model.tar.gz"
    size = run.tarball.stat().st_size
    run.say("upload", f"uploading {size / 1e6:.1f} MB to s3://{bucket}/{key}")
    _upload_file(s3, run.tarball, bucket, key, size, run.say)
    run.rollback.push(f"uploaded s3://{bucket}/{key}", lambda: s3.delete_object(Bucket=bucket, Key=key))
    run.say("upload", f"uploaded in {time.monotonic() - started:.1f} s")


def _create_model(run: CreateRun) -> None:
    """Step "model": the SageMaker model (image, model data, container environment), tagged."""
    plan, sm, name = run.plan, run.client("sagemaker"), run.result.model_name
    extra = {TAG_ARTIFACTS: f"s3://{run.bucket}/{run.run_prefix}/"} if run.tarball is not None else {}
    isolation = {"EnableNetworkIsolation": True} if plan.network_isolation else {}
    sm.create_model(
        ModelName=name,
        ExecutionRoleArn=plan.role,
        PrimaryContainer={
            "Image": plan.image,
            "ModelDataUrl": run.result.model_data_url,
            "Environment": model_environment(plan),
        },
        Tags=tags(plan.mode, plan.name, **extra),
        **isolation,
    )
    run.rollback.push(f"model {name}", lambda: sm.delete_model(ModelName=name))
    what = "the project's own serving image" if plan.own_image else "the PyTorch inference DLC"
    isolated = ", network isolation" if plan.network_isolation else ""
    run.say("model", f"created model {name} ({what} {plan.image}{isolated})")


def _create_endpoint_config(run: CreateRun) -> None:
    """Step "endpoint-config": one variant on the instance type; for async, the S3 output and failure paths."""
    plan, sm, result = run.plan, run.client("sagemaker"), run.result
    name = result.endpoint_config_name
    variant = {
        "VariantName": VARIANT,
        "ModelName": result.model_name,
        "InstanceType": plan.instance_type,
        "InitialInstanceCount": max(1, plan.effective_min),
        "ContainerStartupHealthCheckTimeoutInSeconds": plan.startup_timeout_seconds,
        "ModelDataDownloadTimeoutInSeconds": plan.startup_timeout_seconds,
    }
    config_args: dict[str, Any] = {
        "EndpointConfigName": name,
        "ProductionVariants": [variant],
        "Tags": tags(plan.mode, plan.name),
    }
    if plan.mode == "async":
        result.async_output_path = f"s3://{run.bucket}/{run.endpoint_prefix}/async-output/"
        result.async_failure_path = f"s3://{run.bucket}/{run.endpoint_prefix}/async-failures/"
        config_args["AsyncInferenceConfig"] = {
            "OutputConfig": {"S3OutputPath": result.async_output_path, "S3FailurePath": result.async_failure_path},
            "ClientConfig": {"MaxConcurrentInvocationsPerInstance": plan.max_concurrent_invocations},
        }
    sm.create_endpoint_config(**config_args)
    run.rollback.push(f"endpoint config {name}", lambda: sm.delete_endpoint_config(EndpointConfigName=name))
    run.say(
        "endpoint-config",
        f"created endpoint config {name} ({plan.instance_type} x{variant['InitialInstanceCount']}"
        + (f", async output {result.async_output_path}" if plan.mode == "async" else "")
        + ")",
    )


def _create_endpoint(run: CreateRun) -> None:
    """Step "endpoint": ask SageMaker for the endpoint (it starts Creating)."""
    plan, sm = run.plan, run.client("sagemaker")
    sm.create_endpoint(
        EndpointName=plan.name, EndpointConfigName=run.result.endpoint_config_name, Tags=tags(plan.mode, plan.name)
    )
    run.rollback.push(f"endpoint {plan.name}", lambda: delete_endpoint_and_wait(sm, plan.name, run.poll_seconds))
    run.say("endpoint", f"creating endpoint {plan.name} (this takes 5-15 minutes on AWS)")


def _wait(run: CreateRun) -> None:
    """Step "wait": until InService; DeployError with SageMaker's FailureReason when it fails, or on timeout."""
    sm, name = run.client("sagemaker"), run.plan.name
    started = time.monotonic()
    last_status, last_report = None, started
    while True:
        info = sm.describe_endpoint(EndpointName=name)
        status = info["EndpointStatus"]
        elapsed = time.monotonic() - started
        if status != last_status or time.monotonic() - last_report >= 60:
            run.say("wait", f"{name}: {status} after {elapsed:.0f} s")
            last_status, last_report = status, time.monotonic()
        if status == "InService":
            return
        if status in ("Failed", "OutOfService", "Deleting", "RollingBack"):
            reason = info.get("FailureReason") or "no reason given"
            lines = "\n".join(f"    {line}" for line in container_logs(run.client("logs"), name))
            logs = f"last container log lines ({log_group(name)}):\n{lines}"
            raise DeployError("wait", f"endpoint {name} is {status}: {reason}\n  {logs}")
        if elapsed > run.timeout_seconds:
            raise DeployError("wait", f"endpoint {name} still {status} after {run.timeout_seconds:.0f} s; giving up")
        time.sleep(run.poll_seconds)


def _autoscale(run: CreateRun) -> None:
    """Step "autoscaling": the scalable target and the mode's policies (see studio.deploy.autoscaling)."""
    configure_autoscaling(
        run.plan, run.client("application-autoscaling"), run.client("cloudwatch"), run.rollback, run.say
    )


def _verify(run: CreateRun) -> None:
    """Step "verify": the smoke test (studio.deploy.verify); skipped with a warning when the plan says so."""
    plan = run.plan
    if not plan.verify:
        log.warning("the smoke test of %s was skipped: the endpoint was never asked for an image", plan.name)
        run.say("verify", "SKIPPED (--skip-verify): WARNING the endpoint was never asked for an image")
        return
    verify_endpoint(
        plan.name,
        run.session,
        run.say,
        timeout_seconds=plan.verify_timeout_seconds,
        poll_seconds=run.poll_seconds,
    )
    run.result.verified = True


STEPS: tuple[tuple[str, Callable[[CreateRun], None]], ...] = (
    ("package", _package),
    ("upload", _upload),
    ("model", _create_model),
    ("endpoint-config", _create_endpoint_config),
    ("endpoint", _create_endpoint),
    ("wait", _wait),
    ("autoscaling", _autoscale),
    ("verify", _verify),
)
CREATE_STEPS = ("validate", *(step for step, _ in STEPS))  # as progress reports them, in order


def _ensure_bucket(s3: Any, bucket: str, region: str, rollback: Rollback, say: ProgressCallback) -> None:
    """Create the bucket (private, tagged) unless it exists; the rollback removes it again."""
    from botocore.exceptions import ClientError

    try:
        s3.head_bucket(Bucket=bucket)
        return
    except ClientError as exc:
        if not aws.is_not_found(exc):
            raise
    args: dict[str, Any] = {"Bucket": bucket}
    if region != "us-east-1":
        args["CreateBucketConfiguration"] = {"LocationConstraint": region}
    s3.create_bucket(**args)
    rollback.push(f"bucket s3://{bucket}", lambda: s3.delete_bucket(Bucket=bucket))
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


def _upload_file(s3: Any, path: Path, bucket: str, key: str, size: int, say: ProgressCallback) -> None:
    """Multipart upload, tagged, reporting progress at most every 5 s."""
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
