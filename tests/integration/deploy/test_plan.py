"""studio.deploy.plan: every option is checked, read-only, before anything is created; role discovery."""

from __future__ import annotations

import json

import pytest

from studio.deploy import S3_ARCHIVE, DeployPlan, PlanError, create
from studio.models import ModelKind


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
def test_bad_plans_are_refused_with_nothing_created(account, changes, field):
    plan = DeployPlan(name="sd-ok", model="org/model", instance_type="ml.g4dn.xlarge", role=account.ROLE)
    plan = DeployPlan(**{**plan.__dict__, **changes})
    with pytest.raises(PlanError) as caught:
        create(plan, poll_seconds=0.01)
    assert caught.value.field == field
    assert caught.value.step == "validate"
    assert str(caught.value).startswith(f"validate: {field}: ")
    account.assert_nothing_left()
    assert account.client("s3").list_buckets()["Buckets"] == []


def test_local_models_must_look_like_models(tmp_path):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    text = tmp_path / "weights.bin"
    text.write_bytes(b"x")
    for model, message in ((folder, "without model_index.json"), (text, "not a .safetensors or .ckpt")):
        with pytest.raises(PlanError, match=message) as caught:
            DeployPlan(name="q", model=str(model)).validate(check_aws=False)
        assert caught.value.field == "model"


def test_model_kinds_are_the_studios_plus_the_s3_archive(tmp_path):
    """The model vocabulary is studio.models.ModelKind; only a pre-packaged s3:// archive is deploy's own case."""
    checkpoint = tmp_path / "m.safetensors"
    checkpoint.write_bytes(b"x")
    (tmp_path / "model_index.json").write_text("{}")
    assert DeployPlan(name="q", model="demo").model_kind is ModelKind.DEMO
    assert DeployPlan(name="q", model=str(tmp_path)).model_kind is ModelKind.DIFFUSERS
    assert DeployPlan(name="q", model=str(checkpoint)).model_kind is ModelKind.SINGLE_FILE
    assert DeployPlan(name="q", model="org/model").model_kind is ModelKind.HUB
    assert DeployPlan(name="q", model="s3://b-1/m.tar.gz").model_kind == S3_ARCHIVE


def test_valid_names_and_async_min_zero_pass_offline_validation():
    for name in ("a", "sd-studio-1", "A1--b2", "x" * 63):
        DeployPlan(name=name, model="org/model").validate(check_aws=False)
    plan = DeployPlan(name="q", model="org/model", mode="async").validate(check_aws=False)
    assert plan.effective_min == 0
    assert DeployPlan(name="q", model="org/model").effective_min == 1


def test_missing_region_is_a_clear_error(account, monkeypatch):
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    plan = DeployPlan(name="sd-noregion", model="org/model", instance_type="ml.g4dn.xlarge", role=account.ROLE)
    with pytest.raises(PlanError, match="no AWS region configured") as caught:
        create(plan)
    assert caught.value.field == "region"
    monkeypatch.setenv("AWS_DEFAULT_REGION", account.REGION)
    account.assert_nothing_left()


def test_unknown_region_is_refused(account):
    plan = DeployPlan(
        name="sd-x", model="org/model", instance_type="ml.g4dn.xlarge", role=account.ROLE, region="us-east1"
    )
    with pytest.raises(PlanError, match="not a SageMaker region"):
        plan.validate()


def test_missing_credentials_is_a_clear_error(account, monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookup (would time out)
    plan = DeployPlan(name="sd-nocreds", model="org/model", instance_type="ml.g4dn.xlarge", role=account.ROLE)
    with pytest.raises(PlanError, match="no AWS credentials found") as caught:
        plan.validate()
    assert caught.value.field == "credentials"


def test_existing_endpoint_name_is_refused(account):
    plan = DeployPlan(
        name="sd-twice", model="s3://b-1/m.tar.gz", instance_type="ml.g4dn.xlarge", role=account.ROLE, verify=False
    )
    create(plan, poll_seconds=0.01)
    with pytest.raises(PlanError, match="already exists"):
        create(plan, poll_seconds=0.01)
    assert len(account.client("sagemaker").list_models()["Models"]) == 1  # the second run created nothing


def test_validate_fills_in_the_defaults(account):
    plan = DeployPlan(name="sd-fill", model="org/model", instance_type="ml.g4dn.xlarge", role=account.ROLE).validate()
    assert (plan.region, plan.account, plan.bucket) == ("us-east-1", "123456789012", account.BUCKET)
    assert plan.image == "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.6.0-gpu-py312"


def test_role_is_required_off_a_notebook(account, monkeypatch, tmp_path):
    monkeypatch.setenv("SAGEMAKER_METADATA_FILE", str(tmp_path / "absent.json"))
    plan = DeployPlan(name="sd-role", model="org/model", instance_type="ml.g4dn.xlarge")
    with pytest.raises(PlanError, match="--role") as caught:
        plan.validate()
    assert caught.value.field == "role"


def test_role_is_discovered_from_an_assumed_sagemaker_role(account, monkeypatch, tmp_path):
    monkeypatch.setenv("SAGEMAKER_METADATA_FILE", str(tmp_path / "absent.json"))
    iam = account.client("iam")
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
        creds = account.client("sts").assume_role(RoleArn=arn, RoleSessionName="SageMaker")["Credentials"]
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


def test_role_is_read_from_notebook_metadata(account, monkeypatch, tmp_path):
    sm = account.client("sagemaker")
    arn = sm.create_notebook_instance(NotebookInstanceName="my-nb", InstanceType="ml.t3.medium", RoleArn=account.ROLE)[
        "NotebookInstanceArn"
    ]
    metadata = tmp_path / "resource-metadata.json"
    metadata.write_text(json.dumps({"ResourceName": "my-nb", "ResourceArn": arn}))
    monkeypatch.setenv("SAGEMAKER_METADATA_FILE", str(metadata))
    plan = DeployPlan(name="sd-nb", model="org/model", instance_type="ml.g4dn.xlarge").validate()
    assert plan.role == account.ROLE
