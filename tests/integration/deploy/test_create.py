"""studio.deploy.create against moto: the steps, what each creates and tags, and the rollback when one fails."""

from __future__ import annotations

import importlib
import io
import tarfile

import pytest

from studio.deploy import CREATE_STEPS, MODEL_ENV_VAR, DeployError, DeployPlan, PlanError, create


def test_async_deploy_packages_uploads_and_tags_everything(account, async_deployment, progress):
    result = async_deployment
    # Steps reported in order, each at least once.
    assert progress.steps() == [*CREATE_STEPS, "done"]

    sm = account.client("sagemaker")
    bucket = account.BUCKET
    # The package was uploaded (and tagged) under the default bucket, which this run created.
    assert result.model_data_url.startswith(f"s3://{bucket}/sd-studio/sd-async/")
    key = result.model_data_url.removeprefix(f"s3://{bucket}/")
    s3 = account.client("s3")
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
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
    assert MODEL_ENV_VAR not in container["Environment"]  # the model is in the tarball
    assert model["ExecutionRoleArn"] == account.ROLE

    config = sm.describe_endpoint_config(EndpointConfigName=result.endpoint_config_name)
    variant = config["ProductionVariants"][0]
    assert variant["InstanceType"] == "ml.g5.xlarge"
    assert variant["InitialInstanceCount"] == 1  # created with one, autoscaling takes it to zero when idle
    output = config["AsyncInferenceConfig"]["OutputConfig"]
    assert output["S3OutputPath"] == f"s3://{bucket}/sd-studio/sd-async/async-output/"
    assert output["S3FailurePath"] == f"s3://{bucket}/sd-studio/sd-async/async-failures/"
    assert (result.async_output_path, result.async_failure_path) == (output["S3OutputPath"], output["S3FailurePath"])

    endpoint = sm.describe_endpoint(EndpointName="sd-async")
    for arn in (endpoint["EndpointArn"], config["EndpointConfigArn"], model["ModelArn"]):
        tags = account.tags_of(arn)
        assert tags["sd-studio"] == "true" and tags["sd-studio:mode"] == "async"
        assert tags["sd-studio:endpoint"] == "sd-async"


def test_realtime_hub_model_ships_only_code_and_names_the_model(account, realtime_deployment):
    result = realtime_deployment
    sm = account.client("sagemaker")
    env = sm.describe_model(ModelName=result.model_name)["PrimaryContainer"]["Environment"]
    assert env[MODEL_ENV_VAR] == "stabilityai/sd-turbo"  # hub model: only code packaged, id in env
    config = sm.describe_endpoint_config(EndpointConfigName=result.endpoint_config_name)
    assert "AsyncInferenceConfig" not in config
    assert config["ProductionVariants"][0]["InitialInstanceCount"] == 2
    assert account.tags_of(config["EndpointConfigArn"])["sd-studio:mode"] == "realtime"


def test_s3_model_data_is_used_as_is(account, progress):
    """s3:// model data skips package/upload: no bucket is needed for a real-time endpoint."""
    plan = DeployPlan(
        verify=False,
        name="sd-s3",
        model="s3://my-models/sd/model.tar.gz",
        instance_type="ml.g4dn.xlarge",
        role=account.ROLE,
    )
    result = create(plan, progress, poll_seconds=0.01)
    assert result.model_data_url == "s3://my-models/sd/model.tar.gz"
    assert ("package", "skipped: using the model data s3://my-models/sd/model.tar.gz as is") in progress.events
    assert account.client("s3").list_buckets()["Buckets"] == []  # nothing uploaded, no bucket needed


def test_longest_name_still_fits_model_and_config_names(account):
    name = "n" * 63
    plan = DeployPlan(
        verify=False, name=name, model="s3://b-1/m.tar.gz", instance_type="ml.g4dn.xlarge", role=account.ROLE
    )
    result = create(plan, poll_seconds=0.01)
    assert len(result.model_name) <= 63 and result.model_name.startswith("n" * 47 + "-")


def test_async_with_s3_model_creates_the_output_bucket(account, allow_g5):
    plan = DeployPlan(
        verify=False, name="sd-s3-async", model="s3://my-models/m.tar.gz", mode="async", role=account.ROLE
    )
    result = create(plan, poll_seconds=0.01)
    bucket = result.async_output_path.split("/")[2]
    assert [b["Name"] for b in account.client("s3").list_buckets()["Buckets"]] == [bucket]


# ---- rollback: what this run created is removed when a later step fails ------------------------------------------
def test_rollback_when_create_endpoint_fails(account, monkeypatch, tiny_model, progress):
    from moto.sagemaker.exceptions import ValidationError
    from moto.sagemaker.models import SageMakerModelBackend

    def fail(self, *args, **kwargs):
        raise ValidationError(message="injected: capacity not available")

    monkeypatch.setattr(SageMakerModelBackend, "create_endpoint", fail)
    plan = DeployPlan(
        verify=False, name="sd-fail", model=str(tiny_model), instance_type="ml.g4dn.xlarge", role=account.ROLE
    )
    with pytest.raises(DeployError) as caught:
        create(plan, progress, poll_seconds=0.01)
    assert caught.value.step == "endpoint"
    assert "injected: capacity not available" in str(caught.value)
    rollback = progress.messages("rollback")
    assert any(m.startswith("removed endpoint config sd-fail-") for m in rollback)
    assert any(m.startswith("removed model sd-fail-") for m in rollback)
    assert any(m.startswith("removed uploaded s3://") for m in rollback)
    account.assert_nothing_left()
    assert account.client("s3").list_buckets()["Buckets"] == []  # the bucket this run created is gone too


def test_failed_endpoint_reports_failure_reason_and_rolls_back(account, monkeypatch):
    from moto.sagemaker.models import FakeEndpoint

    original = FakeEndpoint.__init__

    def failing_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.endpoint_status = "Failed"
        self.failure_reason = "The primary container for production variant AllTraffic did not pass the ping check."

    monkeypatch.setattr(FakeEndpoint, "__init__", failing_init)
    plan = DeployPlan(
        verify=False, name="sd-broken", model="s3://b-1/m.tar.gz", instance_type="ml.g4dn.xlarge", role=account.ROLE
    )
    with pytest.raises(DeployError) as caught:
        create(plan, poll_seconds=0.01)
    assert caught.value.step == "wait"
    assert "did not pass the ping check" in str(caught.value)
    assert "/aws/sagemaker/Endpoints/sd-broken" in str(caught.value)
    account.assert_nothing_left()  # endpoint, config and model of this run are removed


def test_an_interrupt_rolls_back_and_goes_through_unchanged(account, monkeypatch, progress):
    """Ctrl-C during a step: what this run created is removed, and KeyboardInterrupt (not DeployError) reaches the
    caller."""
    create_module = importlib.import_module(
        "studio.deploy.create"
    )  # the attribute studio.deploy.create is the function

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(create_module, "configure_autoscaling", interrupt)
    plan = DeployPlan(
        verify=False, name="sd-ctrl-c", model="s3://b-1/m.tar.gz", instance_type="ml.g4dn.xlarge", role=account.ROLE
    )
    with pytest.raises(KeyboardInterrupt):
        create(plan, progress, poll_seconds=0.01)
    assert any(m == "removed endpoint sd-ctrl-c" for m in progress.messages("rollback"))
    assert not any(m.startswith("FAILED") for m in progress.messages("autoscaling"))
    account.assert_nothing_left()


def test_network_isolation_is_sent_with_the_model(account, aws, progress, monkeypatch, tmp_path):
    """moto accepts EnableNetworkIsolation but does not echo it in describe_model: its request recorder shows it."""
    import base64
    import json
    import urllib.request

    import moto.moto_api

    monkeypatch.setattr(moto.moto_api.recorder, "_location", str(tmp_path / "moto_recording"))  # not in the cwd

    def moto_api(path: str) -> bytes:
        request = urllib.request.Request(f"{aws}/moto-api/recorder/{path}", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.read()

    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sd-studio-serve:1"  # the project's own image
    plan = DeployPlan(
        verify=False,
        name="sd-iso",
        model="s3://b-1/m.tar.gz",
        instance_type="ml.g4dn.xlarge",
        role=account.ROLE,
        image=image,
        network_isolation=True,
    )
    assert plan.own_image and not plan.vendors_wheels  # the own image installs nothing at start
    moto_api("reset-recording")
    moto_api("start-recording")
    try:
        create(plan, progress, poll_seconds=0.01)
    finally:
        moto_api("stop-recording")
    with urllib.request.urlopen(f"{aws}/moto-api/recorder/download-recording", timeout=10) as answer:
        recorded = answer.read().decode()
    sent = [json.loads(line)["body"] for line in recorded.splitlines() if "SageMaker.CreateModel" in line]
    assert len(sent) == 1 and json.loads(base64.b64decode(sent[0]))["EnableNetworkIsolation"] is True
    assert any("network isolation" in m and "own serving image" in m for m in progress.messages("model"))


def test_network_isolation_refuses_a_hub_model_and_implies_vendored_wheels():
    with pytest.raises(PlanError, match="network_isolation: the hub model"):
        DeployPlan(name="x", model="org/model", network_isolation=True).validate_offline()
    assert DeployPlan(name="x", model="demo", network_isolation=True).vendors_wheels
