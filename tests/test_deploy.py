"""studio.deploy against a moto server on 127.0.0.1: lifecycle, autoscaling, list, delete, rollback, CLI, UI panel.

moto creates endpoints instantly InService. It rejects ml.g5/g6 in endpoint configs, so tests that use the default
ml.g5.xlarge patch `FakeEndpointConfig.validate_instance_type` (the server runs in this process).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from studio import deploy
from studio.deploy import DeployError, DeployPlan, PlanError
from studio.testing.servers import free_port

REPO = Path(__file__).resolve().parents[1]
ROLE = "arn:aws:iam::123456789012:role/SageMakerExecution"
REGION = "us-east-1"
RESOURCE_ID = "endpoint/{}/variant/AllTraffic"


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


_clients: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def _fresh_clients():
    """Test-side boto3 clients are built once per test (building one takes ~0.1 s)."""
    _clients.clear()
    yield
    _clients.clear()


def client(service: str) -> Any:
    if service not in _clients:
        _clients[service] = deploy.aws_session(REGION).client(service)  # plain boto3, sharing the model loader
    return _clients[service]


def tags_of(arn: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in client("sagemaker").list_tags(ResourceArn=arn)["Tags"]}


def assert_nothing_left() -> None:
    """Every kind of resource deploy creates is listed empty."""
    sm = client("sagemaker")
    assert sm.list_endpoints()["Endpoints"] == []
    assert sm.list_endpoint_configs()["EndpointConfigs"] == []
    assert sm.list_models()["Models"] == []
    autoscaling = client("application-autoscaling")
    assert autoscaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []
    assert autoscaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"] == []
    assert client("cloudwatch").describe_alarms()["MetricAlarms"] == []


def recorder() -> tuple[list[tuple[str, str]], Any]:
    events: list[tuple[str, str]] = []
    return events, lambda step, message: events.append((step, message))


# ----------------------------------------------------------------------------------------------------------------------
# Lifecycle


def test_async_lifecycle_scales_to_zero_and_delete_leaves_nothing(aws, allow_g5, tiny_model):  # noqa: F811
    events, progress = recorder()
    plan = DeployPlan(name="sd-async", model=str(tiny_model), mode="async", max_instances=2, role=ROLE)
    result = deploy.create(plan, progress, poll_seconds=0.01)

    # Steps reported in order, each at least once.
    steps = list(dict.fromkeys(step for step, _ in events))
    assert steps == [*deploy.CREATE_STEPS, "done"]

    sm = client("sagemaker")
    bucket = "sagemaker-us-east-1-123456789012"
    # The package was uploaded (and tagged) under the default bucket, which this run created.
    assert result.model_data_url.startswith(f"s3://{bucket}/sd-studio/sd-async/")
    key = result.model_data_url.removeprefix(f"s3://{bucket}/")
    s3 = client("s3")
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=__import__("io").BytesIO(body)) as tar:
        names = tar.getnames()
    assert {"code/inference.py", "code/requirements.txt", "code/studio/__init__.py", "model_index.json"} <= set(names)
    assert "unet/diffusion_pytorch_model.safetensors" in names
    assert {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]} == {
        "sd-studio": "true"
    }

    model = sm.describe_model(ModelName=result.model_name)
    container = model["PrimaryContainer"]
    assert container["Image"] == "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.6.0-gpu-py312"
    assert container["ModelDataUrl"] == result.model_data_url
    assert container["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    assert deploy.MODEL_ENV_VAR not in container["Environment"]  # the model is in the tarball
    assert model["ExecutionRoleArn"] == ROLE

    config = sm.describe_endpoint_config(EndpointConfigName=result.endpoint_config_name)
    variant = config["ProductionVariants"][0]
    assert variant["InstanceType"] == "ml.g5.xlarge"
    assert variant["InitialInstanceCount"] == 1  # created with one, autoscaling takes it to zero when idle
    output = config["AsyncInferenceConfig"]["OutputConfig"]
    assert output["S3OutputPath"] == f"s3://{bucket}/sd-studio/sd-async/async-output/"
    assert output["S3FailurePath"] == f"s3://{bucket}/sd-studio/sd-async/async-failures/"

    endpoint = sm.describe_endpoint(EndpointName="sd-async")
    for arn in (endpoint["EndpointArn"], config["EndpointConfigArn"], model["ModelArn"]):
        tags = tags_of(arn)
        assert tags["sd-studio"] == "true" and tags["sd-studio:mode"] == "async"
        assert tags["sd-studio:endpoint"] == "sd-async"

    autoscaling = client("application-autoscaling")
    resource_id = RESOURCE_ID.format("sd-async")
    (target,) = autoscaling.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[resource_id])[
        "ScalableTargets"
    ]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (0, 2)
    assert target["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    policies = {
        p["PolicyType"]: p
        for p in autoscaling.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=resource_id)[
            "ScalingPolicies"
        ]
    }
    assert set(policies) == {"TargetTrackingScaling", "StepScaling"}
    metric = policies["TargetTrackingScaling"]["TargetTrackingScalingPolicyConfiguration"][
        "CustomizedMetricSpecification"
    ]
    assert metric["MetricName"] == "ApproximateBacklogSizePerInstance"
    assert metric["Dimensions"] == [{"Name": "EndpointName", "Value": "sd-async"}]
    step = policies["StepScaling"]["StepScalingPolicyConfiguration"]
    assert step["AdjustmentType"] == "ChangeInCapacity"
    assert step["StepAdjustments"][0]["ScalingAdjustment"] == 1

    (alarm,) = client("cloudwatch").describe_alarms()["MetricAlarms"]
    assert alarm["MetricName"] == "HasBacklogWithoutCapacity"
    assert alarm["Namespace"] == "AWS/SageMaker"
    assert alarm["Dimensions"] == [{"Name": "EndpointName", "Value": "sd-async"}]
    assert alarm["AlarmActions"] == [policies["StepScaling"]["PolicyARN"]]
    alarm_tags = client("cloudwatch").list_tags_for_resource(ResourceARN=alarm["AlarmArn"])["Tags"]
    assert {"Key": "sd-studio", "Value": "true"} in alarm_tags

    # list shows it with its fields.
    (info,) = deploy.list_endpoints()
    assert (info.name, info.status, info.mode, info.instance_type, info.instance_count) == (
        "sd-async",
        "InService",
        "async",
        "ml.g5.xlarge",
        1,
    )
    assert info.price_per_hour == deploy.INSTANCE_PRICES["ml.g5.xlarge"]
    assert info.estimated_cost_per_hour == pytest.approx(1.408)
    assert info.age == "0m"
    assert info.row()[-1] == "$1.41"
    status = deploy.status("sd-async")
    assert (status.min_instances, status.max_instances) == (0, 2)
    assert status.async_output_path == output["S3OutputPath"]

    # delete removes everything (artifacts too when asked) and verifies it.
    events, progress = recorder()
    report = deploy.delete("sd-async", delete_artifacts=True, progress=progress, poll_seconds=0.01)
    assert report.ok, report.summary()
    kinds = [d.split(" ")[0] for d in report.deleted]
    # In order: autoscaling first, then endpoint, config, model, artifacts.
    assert kinds == ["scalable", "scaling", "scaling", "alarm(s)", "endpoint", "endpoint", "model", "1"]
    assert "verified: nothing is left" in report.summary()
    assert_nothing_left()
    assert s3.list_objects_v2(Bucket=bucket, Prefix="sd-studio/sd-async/").get("KeyCount", 0) == 0

    # Idempotent: a second delete finds nothing and still succeeds.
    again = deploy.delete("sd-async", delete_artifacts=True)
    assert again.ok and again.deleted == []
    assert "nothing to delete" in again.summary()


def test_realtime_lifecycle_with_hub_model(aws):  # noqa: F811
    plan = DeployPlan(
        name="sd-rt",
        model="stabilityai/sd-turbo",
        instance_type="ml.g4dn.xlarge",
        min_instances=2,
        max_instances=3,
        role=ROLE,
    )
    result = deploy.create(plan, poll_seconds=0.01)
    sm = client("sagemaker")
    env = sm.describe_model(ModelName=result.model_name)["PrimaryContainer"]["Environment"]
    assert env[deploy.MODEL_ENV_VAR] == "stabilityai/sd-turbo"  # hub model: only code packaged, id in env
    config = sm.describe_endpoint_config(EndpointConfigName=result.endpoint_config_name)
    assert "AsyncInferenceConfig" not in config
    assert config["ProductionVariants"][0]["InitialInstanceCount"] == 2
    assert tags_of(config["EndpointConfigArn"])["sd-studio:mode"] == "realtime"

    autoscaling = client("application-autoscaling")
    resource_id = RESOURCE_ID.format("sd-rt")
    (target,) = autoscaling.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[resource_id])[
        "ScalableTargets"
    ]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (2, 3)
    (policy,) = autoscaling.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=resource_id)[
        "ScalingPolicies"
    ]
    assert policy["PolicyType"] == "TargetTrackingScaling"
    spec = policy["TargetTrackingScalingPolicyConfiguration"]["PredefinedMetricSpecification"]
    assert spec["PredefinedMetricType"] == "SageMakerVariantInvocationsPerInstance"
    assert client("cloudwatch").describe_alarms()["MetricAlarms"] == []  # no scale-from-zero alarm in real-time

    (info,) = deploy.list_endpoints()
    assert (info.mode, info.instance_type, info.instance_count) == ("realtime", "ml.g4dn.xlarge", 2)
    assert info.estimated_cost_per_hour == pytest.approx(2 * 0.736)

    report = deploy.delete("sd-rt", poll_seconds=0.01)
    assert report.ok, report.summary()
    assert_nothing_left()


def test_s3_model_data_is_used_as_is_and_list_ignores_untagged(aws):  # noqa: F811
    """s3:// model data skips package/upload; an endpoint not made by the studio is not listed or deleted."""
    sm = client("sagemaker")
    sm.create_model(ModelName="other", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": "x/y:z"})
    sm.create_endpoint_config(
        EndpointConfigName="other",
        ProductionVariants=[
            {"VariantName": "v", "ModelName": "other", "InstanceType": "ml.g4dn.xlarge", "InitialInstanceCount": 1}
        ],
    )
    sm.create_endpoint(EndpointName="other", EndpointConfigName="other")

    events, progress = recorder()
    plan = DeployPlan(name="sd-s3", model="s3://my-models/sd/model.tar.gz", instance_type="ml.g4dn.xlarge", role=ROLE)
    result = deploy.create(plan, progress, poll_seconds=0.01)
    assert result.model_data_url == "s3://my-models/sd/model.tar.gz"
    assert ("package", "skipped: using the model data s3://my-models/sd/model.tar.gz as is") in events
    assert client("s3").list_buckets()["Buckets"] == []  # nothing uploaded, no bucket needed
    assert [e.name for e in deploy.list_endpoints()] == ["sd-s3"]

    with pytest.raises(DeployError, match="not deployed by SD Studio"):
        deploy.delete("other")
    assert sm.describe_endpoint(EndpointName="other")["EndpointStatus"] == "InService"
    assert deploy.delete("sd-s3", poll_seconds=0.01).ok
    assert [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]] == ["other"]


def test_longest_name_and_user_alarms_are_handled(aws):  # noqa: F811
    """A 63-character name still fits model/config names; delete finds them and keeps a user's own alarm."""
    name = "n" * 63
    plan = DeployPlan(name=name, model="s3://b-1/m.tar.gz", instance_type="ml.g4dn.xlarge", role=ROLE)
    result = deploy.create(plan, poll_seconds=0.01)
    assert len(result.model_name) <= 63 and result.model_name.startswith("n" * 47 + "-")
    cloudwatch = client("cloudwatch")
    cloudwatch.put_metric_alarm(
        AlarmName="my-latency-alarm",
        MetricName="ModelLatency",
        Namespace="AWS/SageMaker",
        Dimensions=[{"Name": "EndpointName", "Value": name}],
        Statistic="Average",
        Period=60,
        EvaluationPeriods=1,
        Threshold=1e6,
        ComparisonOperator="GreaterThanThreshold",
    )
    report = deploy.delete(name, poll_seconds=0.01)
    assert report.ok, report.summary()
    assert f"model {result.model_name}" in report.deleted
    assert [a["AlarmName"] for a in cloudwatch.describe_alarms()["MetricAlarms"]] == ["my-latency-alarm"]
    cloudwatch.delete_alarms(AlarmNames=["my-latency-alarm"])
    assert_nothing_left()


def test_async_with_s3_model_creates_the_output_bucket(aws, allow_g5):  # noqa: F811
    plan = DeployPlan(name="sd-s3-async", model="s3://my-models/m.tar.gz", mode="async", role=ROLE)
    result = deploy.create(plan, poll_seconds=0.01)
    bucket = result.async_output_path.split("/")[2]
    assert [b["Name"] for b in client("s3").list_buckets()["Buckets"]] == [bucket]
    assert deploy.delete("sd-s3-async", poll_seconds=0.01).ok
    assert_nothing_left()


# ----------------------------------------------------------------------------------------------------------------------
# Validation: refused before anything is created


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": "bad_name"}, "name"),
        ({"name": "-leading"}, "name"),
        ({"name": "trailing-"}, "name"),
        ({"name": "a" * 64}, "name"),
        ({"name": ""}, "name"),
        ({"name": "has space"}, "name"),
        ({"instance_type": "ml.x9.huge"}, "instance_type"),
        ({"mode": "batch"}, "mode"),
        ({"min_instances": 0}, "min_instances"),  # real-time cannot scale to zero
        ({"mode": "async", "min_instances": -1}, "min_instances"),
        ({"min_instances": 3, "max_instances": 2}, "max_instances"),
        ({"mode": "async", "max_instances": 0}, "max_instances"),
        ({"max_instances": 1.5}, "max_instances"),
        ({"model": ""}, "model"),
        ({"model": "./no/such/folder"}, "model"),
        ({"model": "s3://"}, "model"),
        ({"role": "not-an-arn"}, "role"),
        ({"bucket": "Bad_Bucket"}, "bucket"),
        ({"image": "not an image"}, "image"),
    ],
)
def test_bad_plans_are_refused_with_nothing_created(aws, changes, field):  # noqa: F811
    plan = DeployPlan(name="sd-ok", model="org/model", instance_type="ml.g4dn.xlarge", role=ROLE)
    plan = DeployPlan(**{**plan.__dict__, **changes})
    with pytest.raises(PlanError) as caught:
        deploy.create(plan, poll_seconds=0.01)
    assert caught.value.field == field
    assert caught.value.step == "validate"
    assert str(caught.value).startswith(f"validate: {field}: ")
    assert_nothing_left()
    assert client("s3").list_buckets()["Buckets"] == []


def test_valid_names_and_async_min_zero_pass_offline_validation():
    for name in ("a", "sd-studio-1", "A1--b2", "x" * 63):
        DeployPlan(name=name, model="org/model").validate(check_aws=False)
    plan = DeployPlan(name="q", model="org/model", mode="async").validate(check_aws=False)
    assert plan.effective_min == 0
    assert DeployPlan(name="q", model="org/model").effective_min == 1


def test_missing_region_is_a_clear_error(aws, monkeypatch):  # noqa: F811
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    plan = DeployPlan(name="sd-noregion", model="org/model", instance_type="ml.g4dn.xlarge", role=ROLE)
    with pytest.raises(PlanError, match="no AWS region configured") as caught:
        deploy.create(plan)
    assert caught.value.field == "region"
    with pytest.raises(PlanError, match="region"):
        deploy.list_endpoints()
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    assert_nothing_left()


def test_unknown_region_is_refused(aws):  # noqa: F811
    plan = DeployPlan(name="sd-x", model="org/model", instance_type="ml.g4dn.xlarge", role=ROLE, region="us-east1")
    with pytest.raises(PlanError, match="not a SageMaker region"):
        plan.validate()


def test_missing_credentials_is_a_clear_error(aws, monkeypatch):  # noqa: F811
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookup (would time out)
    plan = DeployPlan(name="sd-nocreds", model="org/model", instance_type="ml.g4dn.xlarge", role=ROLE)
    with pytest.raises(PlanError, match="no AWS credentials found") as caught:
        plan.validate()
    assert caught.value.field == "credentials"
    assert deploy.running_endpoints_warning() is None  # the start-up check stays quiet, never raises


def test_existing_endpoint_name_is_refused(aws):  # noqa: F811
    plan = DeployPlan(name="sd-twice", model="s3://b-1/m.tar.gz", instance_type="ml.g4dn.xlarge", role=ROLE)
    deploy.create(plan, poll_seconds=0.01)
    with pytest.raises(PlanError, match="already exists"):
        deploy.create(plan, poll_seconds=0.01)
    assert len(client("sagemaker").list_models()["Models"]) == 1  # the second run created nothing


def test_role_is_required_off_a_notebook(aws, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setenv("SAGEMAKER_METADATA_FILE", str(tmp_path / "absent.json"))
    plan = DeployPlan(name="sd-role", model="org/model", instance_type="ml.g4dn.xlarge")
    with pytest.raises(PlanError, match="--role") as caught:
        plan.validate()
    assert caught.value.field == "role"


def test_role_is_discovered_from_an_assumed_sagemaker_role(aws, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setenv("SAGEMAKER_METADATA_FILE", str(tmp_path / "absent.json"))
    iam = client("iam")
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
    role_arn = iam.create_role(
        RoleName="NotebookRole", Path="/service-role/", AssumeRolePolicyDocument=json.dumps(trust)
    )["Role"]["Arn"]
    other = iam.create_role(RoleName="PlainRole", AssumeRolePolicyDocument=json.dumps({"Statement": []}))["Role"]["Arn"]

    def become(arn: str) -> None:
        creds = client("sts").assume_role(RoleArn=arn, RoleSessionName="SageMaker")["Credentials"]
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", creds["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", creds["SecretAccessKey"])
        monkeypatch.setenv("AWS_SESSION_TOKEN", creds["SessionToken"])

    become(role_arn)
    plan = DeployPlan(name="sd-role", model="org/model", instance_type="ml.g4dn.xlarge").validate()
    assert plan.role == role_arn  # the IAM ARN with its path, not the sts assumed-role ARN
    assert role_arn.startswith("arn:aws:iam::123456789012:role/service-role/")

    become(other)  # a role SageMaker cannot assume is not used
    with pytest.raises(PlanError, match="--role"):
        DeployPlan(name="sd-role", model="org/model", instance_type="ml.g4dn.xlarge").validate()


def test_role_is_read_from_notebook_metadata(aws, monkeypatch, tmp_path):  # noqa: F811
    sm = client("sagemaker")
    arn = sm.create_notebook_instance(NotebookInstanceName="my-nb", InstanceType="ml.t3.medium", RoleArn=ROLE)[
        "NotebookInstanceArn"
    ]
    metadata = tmp_path / "resource-metadata.json"
    metadata.write_text(json.dumps({"ResourceName": "my-nb", "ResourceArn": arn}))
    monkeypatch.setenv("SAGEMAKER_METADATA_FILE", str(metadata))
    plan = DeployPlan(name="sd-nb", model="org/model", instance_type="ml.g4dn.xlarge").validate()
    assert plan.role == ROLE


# ----------------------------------------------------------------------------------------------------------------------
# Rollback


def test_rollback_when_create_endpoint_fails(aws, monkeypatch, tiny_model):  # noqa: F811
    from moto.sagemaker.exceptions import ValidationError
    from moto.sagemaker.models import SageMakerModelBackend

    def fail(self, *args, **kwargs):
        raise ValidationError(message="injected: capacity not available")

    monkeypatch.setattr(SageMakerModelBackend, "create_endpoint", fail)
    events, progress = recorder()
    plan = DeployPlan(name="sd-fail", model=str(tiny_model), instance_type="ml.g4dn.xlarge", role=ROLE)
    with pytest.raises(DeployError) as caught:
        deploy.create(plan, progress, poll_seconds=0.01)
    assert caught.value.step == "endpoint"
    assert "injected: capacity not available" in str(caught.value)
    rollback = [message for step, message in events if step == "rollback"]
    assert any(m.startswith("removed endpoint config sd-fail-") for m in rollback)
    assert any(m.startswith("removed model sd-fail-") for m in rollback)
    assert any(m.startswith("removed uploaded s3://") for m in rollback)
    assert_nothing_left()
    assert client("s3").list_buckets()["Buckets"] == []  # the bucket this run created is gone too


def test_failed_endpoint_reports_failure_reason_and_rolls_back(aws, monkeypatch):  # noqa: F811
    from moto.sagemaker.models import FakeEndpoint

    original = FakeEndpoint.__init__

    def failing_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.endpoint_status = "Failed"
        self.failure_reason = "The primary container for production variant AllTraffic did not pass the ping check."

    monkeypatch.setattr(FakeEndpoint, "__init__", failing_init)
    plan = DeployPlan(name="sd-broken", model="s3://b-1/m.tar.gz", instance_type="ml.g4dn.xlarge", role=ROLE)
    with pytest.raises(DeployError) as caught:
        deploy.create(plan, poll_seconds=0.01)
    assert caught.value.step == "wait"
    assert "did not pass the ping check" in str(caught.value)
    assert "/aws/sagemaker/Endpoints/sd-broken" in str(caught.value)
    assert_nothing_left()  # endpoint, config and model of this run are removed


def test_rollback_when_autoscaling_fails(aws, allow_g5, monkeypatch):  # noqa: F811
    from moto.cloudwatch.models import CloudWatchBackend

    def fail(self, *args, **kwargs):
        raise RuntimeError("injected alarm failure")

    monkeypatch.setattr(CloudWatchBackend, "put_metric_alarm", fail)
    plan = DeployPlan(name="sd-as", model="s3://b-1/m.tar.gz", mode="async", role=ROLE)
    with pytest.raises(DeployError) as caught:
        deploy.create(plan, poll_seconds=0.01)
    assert caught.value.step == "autoscaling"
    assert_nothing_left()  # policies and scalable target too, not only the SageMaker resources


# ----------------------------------------------------------------------------------------------------------------------
# Start-up warning, import weight, prices


def test_running_endpoints_warning(aws):  # noqa: F811
    assert deploy.running_endpoints_warning() is None
    plan = DeployPlan(name="sd-warn", model="s3://b-1/m.tar.gz", instance_type="ml.g4dn.xlarge", role=ROLE)
    deploy.create(plan, poll_seconds=0.01)
    warning = deploy.running_endpoints_warning()
    assert warning is not None
    assert "sd-warn (InService, ml.g4dn.xlarge x1, realtime)" in warning
    assert "$0.74/h" in warning


def test_running_endpoints_warning_is_quiet_without_a_region(monkeypatch):
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    assert deploy.running_endpoints_warning() is None


def test_importing_deploy_does_not_import_boto3():
    code = "import sys, studio.deploy; print(sorted(m for m in ('boto3', 'botocore', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_panel_imports_neither_boto3_nor_deploy_at_module_level():
    """Checked on the source (importing gradio in a subprocess costs ~10 s): top-level imports only."""
    import ast

    tree = ast.parse((REPO / "studio" / "ui" / "deploy_panel.py").read_text())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            top.add(node.module or "")
    assert not {m for m in top if m.split(".")[0] in ("boto3", "botocore", "torch", "diffusers")}
    assert "studio.deploy" not in top and "studio" not in top


def test_price_text_and_default_image():
    assert deploy.price_per_hour("ml.g5.xlarge") == 1.408
    assert deploy.price_per_hour("ml.nope") is None
    text = deploy.describe_price("ml.g5.xlarge", "async", None, 2)
    assert "$0.00/h when idle" in text and "$2.82/h at 2 instance(s)" in text
    assert "$1.41/h with 1 instance(s)" in deploy.describe_price("ml.g5.xlarge")
    assert deploy.default_image("eu-west-1").startswith("763104351884.dkr.ecr.eu-west-1.amazonaws.com/")
    assert deploy.default_image("cn-north-1") == (
        "727897471807.dkr.ecr.cn-north-1.amazonaws.com.cn/pytorch-inference:2.6.0-gpu-py312"
    )


def test_container_requirements_leave_torch_to_the_dlc():
    requirements = deploy.container_requirements()
    names = {r.split("==")[0].lower() for r in requirements}
    assert "diffusers" in names and "transformers" in names
    assert not names & {"torch", "torchvision", "gradio", "gradio_client"}
    assert "openai-clip" in names  # single-file checkpoints build their CLIP tokenizer from its vocabulary


# ----------------------------------------------------------------------------------------------------------------------
# CLI


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = deploy.main(argv)
    return code, capsys.readouterr().out


def test_cli_create_list_status_delete(aws, capsys):  # noqa: F811
    common = ["--region", REGION]
    code, out = run_cli(
        ["create", "--name", "sd-cli", "--model", "s3://b-1/m.tar.gz", "--instance-type", "ml.g4dn.xlarge",
         "--mode", "async", "--max-instances", "2", "--role", ROLE, "--yes", "--poll-seconds", "0.01", *common],
        capsys,
    )  # fmt: skip
    assert code == 0, out
    assert "ml.g4dn.xlarge: $0.736 per instance-hour" in out  # price before deploying
    for step in ("[validate]", "[package]", "[model]", "[endpoint-config]", "[endpoint]", "[wait]", "[autoscaling]"):
        assert step in out
    assert "Endpoint sd-cli is ready" in out

    code, out = run_cli(["list", *common], capsys)
    assert code == 0
    header, row = out.splitlines()[:2]
    assert header.split() == ["name", "status", "mode", "instance", "type", "instances", "age", "est.", "$/h"]
    assert row.split() == ["sd-cli", "InService", "async", "ml.g4dn.xlarge", "1", "0m", "$0.74"]

    code, out = run_cli(["status", "--name", "sd-cli", *common], capsys)
    assert code == 0 and "autoscaling 0-2" in out and "async output s3://" in out

    code, out = run_cli(["delete", "--name", "sd-cli", "--yes", "--poll-seconds", "0.01", *common], capsys)
    assert code == 0, out
    assert "verified: nothing is left" in out
    assert_nothing_left()

    code, out = run_cli(["delete", "--name", "sd-cli", "--yes", *common], capsys)
    assert code == 0 and "nothing to delete" in out
    code, out = run_cli(["list", *common], capsys)
    assert out.strip() == "No SD Studio endpoints."
    code, out = run_cli(["status", "--name", "sd-cli", *common], capsys)
    assert code == 1 and "no endpoint named 'sd-cli'" in out


def test_cli_refuses_without_confirmation_and_reports_errors(aws, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setattr(sys, "stdin", open(__file__))  # not a terminal: cannot ask  # noqa: SIM115
    base = ["create", "--name", "sd-ask", "--model", "org/model", "--instance-type", "ml.g4dn.xlarge", "--role", ROLE]
    code, out = run_cli(base, capsys)
    assert code == 3 and "nothing was created" in out
    assert_nothing_left()

    code, out = run_cli(["create", "--name", "bad_name", "--model", "org/model", "--yes"], capsys)
    assert code == 1
    assert out.startswith("error: validate: name: 'bad_name' is not a valid SageMaker endpoint name")
    code, out = run_cli([*base[:-2], "--yes"], capsys)  # no role, not on a notebook
    assert code == 1 and "validate: role:" in out


def test_cli_runs_as_a_module_against_moto(aws):  # noqa: F811
    """The real entry point, in a subprocess that reaches moto only through AWS_ENDPOINT_URL."""
    import os

    out = subprocess.run(
        [sys.executable, "-m", "studio.deploy", "list"], cwd=REPO, capture_output=True, text=True, env=dict(os.environ)
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "No SD Studio endpoints."
    bad = subprocess.run(
        [sys.executable, "-m", "studio.deploy", "delete", "--name", "x_y", "--yes"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ),
    )
    assert bad.returncode == 1 and "not a valid SageMaker endpoint name" in bad.stdout


# ----------------------------------------------------------------------------------------------------------------------
# The Settings tab's Deploy panel, driven through gradio_client like a user would


@pytest.fixture
def panel_app(aws):  # noqa: F811
    import gradio as gr
    from gradio_client import Client

    from studio.ui.deploy_panel import build_deploy_panel

    used: list[str] = []

    def use(name: str) -> str:
        if name == "explode":
            raise ValueError("cannot use that one")
        used.append(name)
        return f"Now using endpoint {name}"

    with gr.Blocks() as demo, gr.Tab("Settings"):
        build_deploy_panel(use)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False), used
    finally:
        demo.close()


def test_panel_deploy_use_and_delete(panel_app):
    from gradio_client.exceptions import AppError

    app, used = panel_app
    args = dict(
        endpoint="sd-ui",
        model_spec="s3://b-1/m.tar.gz",
        kind="ml.g4dn.xlarge",
        how="realtime",
        low=None,
        high=2,
        bucket_name="",
        key_prefix="sd-studio",
        role_arn=ROLE,
        image_uri="",
        region_name="",
    )
    price = app.predict(kind="ml.g5.2xlarge", how="async", low=None, high=3, api_name="/deploy_price")
    assert price.startswith("ml.g5.2xlarge: $1.515 per instance-hour")
    assert "$0.00/h when idle (scales to zero), up to $4.54/h at 3 instance(s)" in price

    with pytest.raises(AppError, match="I accept the hourly cost"):
        app.predict(**args, accepted=False, api_name="/deploy_create")
    with pytest.raises(AppError, match="name: 'bad_name' is not a valid"):
        app.predict(**{**args, "endpoint": "bad_name"}, accepted=True, api_name="/deploy_create")
    assert_nothing_left()

    job = app.submit(**args, accepted=True, api_name="/deploy_create")
    updates = list(job)  # streamed log snapshots
    log_text = job.result()
    assert len(updates) >= 5  # step by step, not one final blob
    assert "[endpoint-config] created endpoint config sd-ui-" in log_text
    assert "[autoscaling] target tracking: 10 invocations/instance/minute" in log_text
    assert "Endpoint sd-ui is ready" in log_text

    table, selected = app.predict(region_name="", current=None, api_name="/deploy_list")
    assert table["headers"] == deploy.TABLE_HEADERS
    assert table["data"] == [["sd-ui", "InService", "realtime", "ml.g4dn.xlarge", "1", "0m", "$0.74"]]
    assert selected["choices"] == [["sd-ui", "sd-ui"]] and selected["value"] == "sd-ui"

    assert app.predict(endpoint="sd-ui", api_name="/deploy_use") == "Now using endpoint sd-ui"
    assert used == ["sd-ui"]
    with pytest.raises(AppError, match="cannot use that one"):
        app.predict(endpoint="explode", api_name="/deploy_use")

    with pytest.raises(AppError, match="Yes, delete this endpoint"):
        app.predict(endpoint="sd-ui", confirmed=False, artifacts=False, region_name="", api_name="/deploy_delete")
    assert client("sagemaker").list_endpoints()["Endpoints"]  # still there
    log_text = app.predict(endpoint="sd-ui", confirmed=True, artifacts=False, region_name="", api_name="/deploy_delete")
    assert "verified: nothing is left" in log_text
    assert_nothing_left()
    table, selected = app.predict(region_name="", current="sd-ui", api_name="/deploy_list")
    assert table["data"] == [] and selected["value"] is None


def test_panel_shows_deploy_failures(panel_app, monkeypatch):
    from gradio_client.exceptions import AppError
    from moto.sagemaker.exceptions import ValidationError
    from moto.sagemaker.models import SageMakerModelBackend

    def fail(self, *args, **kwargs):
        raise ValidationError(message="injected: quota exceeded for ml.g4dn.xlarge")

    monkeypatch.setattr(SageMakerModelBackend, "create_endpoint", fail)
    app, _ = panel_app
    with pytest.raises(AppError, match="endpoint: ValidationException: injected: quota exceeded"):
        app.predict(
            endpoint="sd-ui-fail",
            model_spec="s3://b-1/m.tar.gz",
            kind="ml.g4dn.xlarge",
            how="realtime",
            low=None,
            high=1,
            bucket_name="",
            key_prefix="sd-studio",
            role_arn=ROLE,
            image_uri="",
            region_name="",
            accepted=True,
            api_name="/deploy_create",
        )
    assert_nothing_left()


def test_settings_tab_deploy_use_delete_in_the_real_app(aws, tmp_path, monkeypatch):  # noqa: F811
    """As a new user: in the studio's own Settings tab, deploy the demo model, switch to it, then delete it."""
    from gradio_client import Client

    import app
    from studio.config import load_settings

    for key in [k for k in __import__("os").environ if k.startswith("STUDIO_")]:
        monkeypatch.delenv(key)
    port = free_port()
    # http backend at a closed port: the studio starts without loading a model; the switch goes to SageMaker.
    settings = load_settings(
        ["--backend", "http", "--url", "http://127.0.0.1:9", "--port", str(port), "--outputs", str(tmp_path / "out")]
    )
    blocks, controller = app.launch(settings, prevent_thread_lock=True)
    try:
        studio = Client(f"http://127.0.0.1:{port}/", verbose=False)
        log_text = studio.predict(
            endpoint="sd-e2e",
            model_spec="demo",
            kind="ml.g4dn.xlarge",
            how="async",
            low=None,
            high=1,
            bucket_name="",
            key_prefix="sd-studio",
            role_arn=ROLE,
            image_uri="",
            region_name="",
            accepted=True,
            api_name="/deploy_create",
        )
        assert "[upload] uploaded" in log_text and "Endpoint sd-e2e is ready" in log_text
        message = studio.predict(endpoint="sd-e2e", api_name="/deploy_use")
        assert "sd-e2e" in message
        status = controller.status()
        assert (status.backend, status.model) == ("sagemaker", "sd-e2e")
        log_text = studio.predict(
            endpoint="sd-e2e", confirmed=True, artifacts=True, region_name="", api_name="/deploy_delete"
        )
        assert "verified: nothing is left" in log_text
        assert_nothing_left()
    finally:
        blocks.close()
