"""Fixtures of the deploy tests: a moto account to inspect, deployments made through studio.deploy, a progress
recorder. The moto server itself (`moto_server`, `aws`) comes from tests/conftest.py.

moto creates endpoints instantly InService. It rejects ml.g5/g6 in endpoint configs, so tests that use the default
ml.g5.xlarge ask for `allow_g5`, which patches `FakeEndpointConfig.validate_instance_type` (the server runs in this
process).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from studio import aws as studio_aws
from studio.deploy import DeployPlan, DeployResult, create


class AwsAccount:
    """The moto account as a test inspects it: plain boto3 clients (built once per test) and what deploy left."""

    REGION = "us-east-1"
    ROLE = "arn:aws:iam::123456789012:role/SageMakerExecution"
    BUCKET = "sagemaker-us-east-1-123456789012"  # the default bucket deploy uses in moto's account

    def __init__(self) -> None:
        self._clients: dict[str, Any] = {}

    def client(self, service: str) -> Any:
        if service not in self._clients:
            # plain boto3 (sharing the service-model loader), not studio.aws.client's configured one
            self._clients[service] = studio_aws.new_session(self.REGION).client(service)
        return self._clients[service]

    def tags_of(self, arn: str) -> dict[str, str]:
        return {t["Key"]: t["Value"] for t in self.client("sagemaker").list_tags(ResourceArn=arn)["Tags"]}

    def assert_nothing_left(self) -> None:
        """Every kind of resource deploy creates is listed empty."""
        sm = self.client("sagemaker")
        assert sm.list_endpoints()["Endpoints"] == []
        assert sm.list_endpoint_configs()["EndpointConfigs"] == []
        assert sm.list_models()["Models"] == []
        autoscaling = self.client("application-autoscaling")
        assert autoscaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []
        assert autoscaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"] == []
        assert self.client("cloudwatch").describe_alarms()["MetricAlarms"] == []


class ProgressRecorder:
    """A progress callback that keeps every (step, message)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def __call__(self, step: str, message: str) -> None:
        self.events.append((step, message))

    def steps(self) -> list[str]:
        """The steps reported, in order, each once."""
        return list(dict.fromkeys(step for step, _ in self.events))

    def messages(self, step: str) -> list[str]:
        return [message for s, message in self.events if s == step]


@pytest.fixture
def account(aws: str) -> AwsAccount:
    """A clean moto account (the `aws` fixture) and clients to inspect it."""
    return AwsAccount()


@pytest.fixture
def progress() -> ProgressRecorder:
    return ProgressRecorder()


@pytest.fixture
def allow_g5(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let moto accept ml.g5/g6 instance types (real SageMaker does)."""
    from moto.sagemaker.models import FakeEndpointConfig

    monkeypatch.setattr(FakeEndpointConfig, "validate_instance_type", lambda self, instance_type: None)


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    """A folder that looks like a diffusers model to the packager (content is not loaded by these tests)."""
    folder = tmp_path / "tiny-model"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 1024)
    return folder


@pytest.fixture
def async_deployment(account: AwsAccount, allow_g5: None, tiny_model: Path, progress: ProgressRecorder) -> DeployResult:
    """ "sd-async": the tiny local model packaged, uploaded and deployed async on ml.g5.xlarge, 0-2 instances."""
    plan = DeployPlan(
        verify=False, name="sd-async", model=str(tiny_model), mode="async", max_instances=2, role=account.ROLE
    )
    return create(plan, progress, poll_seconds=0.01)


@pytest.fixture
def realtime_deployment(account: AwsAccount) -> DeployResult:
    """ "sd-rt": a hub model (only code packaged) deployed real-time on ml.g4dn.xlarge, 2-3 instances."""
    plan = DeployPlan(
        verify=False,
        name="sd-rt",
        model="stabilityai/sd-turbo",
        instance_type="ml.g4dn.xlarge",
        min_instances=2,
        max_instances=3,
        role=account.ROLE,
    )
    return create(plan, poll_seconds=0.01)


@pytest.fixture
def foreign_endpoint(account: AwsAccount) -> str:
    """An InService endpoint "other" that SD Studio did not deploy (no sd-studio tags)."""
    sm = account.client("sagemaker")
    sm.create_model(ModelName="other", ExecutionRoleArn=account.ROLE, PrimaryContainer={"Image": "x/y:z"})
    sm.create_endpoint_config(
        EndpointConfigName="other",
        ProductionVariants=[
            {"VariantName": "v", "ModelName": "other", "InstanceType": "ml.g4dn.xlarge", "InitialInstanceCount": 1}
        ],
    )
    sm.create_endpoint(EndpointName="other", EndpointConfigName="other")
    return "other"


class Runtime:
    """The SageMaker runtime stand-in in front of serving apps (FakeEngine) on 127.0.0.1, and CloudWatch Logs.

    `serve(endpoint, engine)` starts a serving app for the endpoint; with `mode="async"` the stand-in answers
    through S3 at the output path `create` gives the endpoint. `log(endpoint, *lines)` puts container log lines
    into moto's CloudWatch Logs, where `create` reads them on failure.
    """

    def __init__(self, standin: Any, account: AwsAccount):
        self.standin = standin
        self.account = account
        self.servers: list[Any] = []

    def serve(self, endpoint: str, engine: Any, *, mode: str = "realtime") -> Any:
        from studio.config import ServingSettings
        from studio.serving.app import create_app
        from studio.testing.servers import UvicornThread

        server = UvicornThread(create_app(engine, settings=ServingSettings(), load=False)).start()
        self.servers.append(server)
        paths = {}
        if mode == "async":
            base = f"s3://{AwsAccount.BUCKET}/sd-studio/{endpoint}"
            paths = {"output_path": f"{base}/async-output/", "failure_path": f"{base}/async-failures/"}
        self.standin.add_endpoint(endpoint, server.url, **paths)
        return server

    def log(self, endpoint: str, *lines: str) -> None:
        logs = self.account.client("logs")
        group = f"/aws/sagemaker/Endpoints/{endpoint}"
        if not logs.describe_log_groups(logGroupNamePrefix=group)["logGroups"]:
            logs.create_log_group(logGroupName=group)
            logs.create_log_stream(logGroupName=group, logStreamName="AllTraffic/i-0123456789")
        now = int(time.time() * 1000)
        events = [{"timestamp": now + i, "message": line} for i, line in enumerate(lines)]
        logs.put_log_events(logGroupName=group, logStreamName="AllTraffic/i-0123456789", logEvents=events)


@pytest.fixture
def runtime(account: AwsAccount, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    """The runtime stand-in (AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME points at it) with moto's S3 for async."""
    from studio.testing.sagemaker_standin import SageMakerRuntimeStandin

    with SageMakerRuntimeStandin(account.client("s3")) as standin:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", standin.url)
        helper = Runtime(standin, account)
        yield helper
        for server in helper.servers:
            server.stop()
