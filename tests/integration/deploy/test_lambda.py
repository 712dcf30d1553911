"""The Lambda target against moto: create -> list -> delete -> nothing left; a bad name creates nothing; the function
URL is AWS_IAM unless --public-url; tags, role policy, rollback, the CLI, the price table and the Settings tab."""

from __future__ import annotations

import json
import sys

import pytest

from studio.deploy import lambda_ as target
from studio.deploy.__main__ import main
from studio.deploy.inventory import list_targets
from studio.deploy.plan import DeployError, PlanError

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sd-studio-lambda:latest"


class LambdaAccount:
    """What the Lambda target creates, as the test inspects it in moto."""

    def __init__(self, account):
        self.account = account
        self.lambda_ = account.client("lambda")
        self.iam = account.client("iam")
        self.logs = account.client("logs")

    def functions(self) -> list[str]:
        return [f["FunctionName"] for f in self.lambda_.list_functions()["Functions"]]

    def roles(self) -> list[str]:
        return [r["RoleName"] for r in self.iam.list_roles()["Roles"] if r["RoleName"].startswith("sd-studio-")]

    def log_groups(self) -> list[str]:
        return [
            g["logGroupName"] for g in self.logs.describe_log_groups(logGroupNamePrefix="/aws/lambda/")["logGroups"]
        ]

    def assert_nothing_left(self) -> None:
        assert self.functions() == [] and self.roles() == [] and self.log_groups() == []


@pytest.fixture
def lam(account) -> LambdaAccount:
    return LambdaAccount(account)


def plan(**changes) -> target.LambdaPlan:
    values = {"name": "sd-fn", "image_uri": IMAGE, "memory": 10240, "timeout": 900, "region": "us-east-1"}
    return target.LambdaPlan(**{**values, **changes})


def test_create_list_delete_leaves_nothing(lam, progress):
    result = target.create_function(plan(model="/opt/sd-studio/model"), progress, poll_seconds=0.01)
    assert progress.steps() == ["role", "logs", "function", "wait", "url"]
    assert result.auth_type == "AWS_IAM" and result.role_created and result.function_url.startswith("https://")

    config = lam.lambda_.get_function(FunctionName="sd-fn")["Configuration"]
    assert config["PackageType"] == "Image" and config["MemorySize"] == 10240 and config["Timeout"] == 900
    assert config["Environment"]["Variables"] == {"STUDIO_MODEL": "/opt/sd-studio/model"}
    assert config["Role"] == result.role_arn
    tags = lam.lambda_.list_tags(Resource=config["FunctionArn"])["Tags"]
    assert tags == {"sd-studio": "true", "sd-studio:mode": "lambda", "sd-studio:endpoint": "sd-fn",
                    "sd-studio:role": "sd-studio-sd-fn"}  # fmt: skip
    url = lam.lambda_.get_function_url_config(FunctionName="sd-fn")
    assert url["AuthType"] == "AWS_IAM" and url["FunctionUrl"] == result.function_url
    assert lam.roles() == ["sd-studio-sd-fn"] and lam.log_groups() == ["/aws/lambda/sd-fn"]
    role_tags = {t["Key"]: t["Value"] for t in lam.iam.list_role_tags(RoleName="sd-studio-sd-fn")["Tags"]}
    assert role_tags["sd-studio"] == "true" and role_tags["sd-studio:endpoint"] == "sd-fn"

    listed = list_targets("us-east-1")
    assert [(f.name, f.status, f.mode) for f in listed] == [("sd-fn", "Active", "lambda")]
    assert listed[0].row() == ["sd-fn", "Active", "lambda", "10240 MB", "-", "0m", "$0.00 idle"]
    assert listed[0].url == result.function_url and listed[0].auth_type == "AWS_IAM"

    report = target.delete_function("sd-fn", "us-east-1", progress)
    assert report.ok and "verified: nothing is left" in report.summary()
    assert set(report.deleted) == {"function URL of sd-fn", "function sd-fn", "role sd-studio-sd-fn",
                                   "log group /aws/lambda/sd-fn"}  # fmt: skip
    lam.assert_nothing_left()
    again = target.delete_function("sd-fn", "us-east-1")
    assert again.ok and again.deleted == [] and "nothing to delete" in again.summary()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": "bad name!"}, "name"),
        ({"name": "x" * 55}, "name"),
        ({"image_uri": "docker.io/library/python:3.12"}, "image_uri"),
        ({"image_uri": IMAGE.replace("us-east-1", "eu-west-1")}, "image_uri"),
        ({"memory": 20000}, "memory"),
        ({"timeout": 0}, "timeout"),
        ({"ephemeral_storage": 100}, "ephemeral_storage"),
        ({"model": "s3://Bad_Bucket/x"}, "model"),
        ({"role": "not-an-arn"}, "role"),
        ({"role": "arn:aws:iam::123456789012:role/missing"}, "role"),
    ],
)
def test_a_bad_plan_creates_nothing(lam, changes, field):
    with pytest.raises(PlanError) as error:
        target.create_function(plan(**changes), poll_seconds=0.01)
    assert error.value.field == field
    lam.assert_nothing_left()


def test_an_existing_name_is_refused_before_anything_is_created(lam):
    target.create_function(plan(), poll_seconds=0.01)
    with pytest.raises(PlanError, match="already exists"):
        target.create_function(plan(), poll_seconds=0.01)
    assert lam.functions() == ["sd-fn"] and lam.roles() == ["sd-studio-sd-fn"]
    assert target.delete_function("sd-fn", "us-east-1").ok


def test_public_url_only_when_asked_and_with_a_warning(lam, progress, caplog):
    result = target.create_function(plan(public_url=True), progress, poll_seconds=0.01)
    assert result.auth_type == "NONE"
    assert lam.lambda_.get_function_url_config(FunctionName="sd-fn")["AuthType"] == "NONE"
    policy = json.loads(lam.lambda_.get_policy(FunctionName="sd-fn")["Policy"])
    assert [s["Action"] for s in policy["Statement"]] == ["lambda:InvokeFunctionUrl"]
    assert any("PUBLIC" in m for m in progress.messages("url")) and "PUBLIC" in caplog.text
    assert target.delete_function("sd-fn", "us-east-1").ok
    lam.assert_nothing_left()


def test_a_given_role_is_used_and_never_deleted(lam):
    role = lam.iam.create_role(RoleName="mine", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    result = target.create_function(plan(role=role), poll_seconds=0.01)
    assert result.role_arn == role and not result.role_created
    assert target.delete_function("sd-fn", "us-east-1").ok
    assert lam.iam.get_role(RoleName="mine")["Role"]["Arn"] == role


def test_the_role_may_only_log_and_reach_its_s3_locations():
    policy = target.role_policy(
        plan(model="s3://models/sd15/", s3_output="s3://out/images/", s3_allowed_prefixes=("s3://inbox/uploads/",))
    )
    actions = {tuple(s["Action"]): s["Resource"] for s in policy["Statement"]}
    assert actions[("logs:CreateLogStream", "logs:PutLogEvents")].endswith(":log-group:/aws/lambda/sd-fn:*")
    assert actions[("s3:GetObject",)] == ["arn:aws:s3:::inbox/uploads/*", "arn:aws:s3:::models/sd15/*"]
    assert actions[("s3:PutObject",)] == ["arn:aws:s3:::inbox/uploads/*", "arn:aws:s3:::out/images/*"]
    assert actions[("s3:ListBucket",)] == "arn:aws:s3:::models"
    assert "*" not in json.dumps([s["Action"] for s in policy["Statement"]])


def test_a_failed_step_rolls_back_everything(lam, monkeypatch):
    def fail(run):
        raise RuntimeError("URL service unavailable")

    monkeypatch.setattr(target, "_create_url", fail)
    with pytest.raises(DeployError, match="url: .*everything created was removed"):
        target.create_function(plan(), poll_seconds=0.01)
    lam.assert_nothing_left()


def test_delete_refuses_a_function_sd_studio_did_not_create(lam, account):
    role = lam.iam.create_role(RoleName="theirs", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    lam.lambda_.create_function(FunctionName="theirs", Role=role, Code={"ImageUri": IMAGE}, PackageType="Image")
    with pytest.raises(DeployError, match="not deployed by SD Studio"):
        target.delete_function("theirs", "us-east-1")
    assert lam.functions() == ["theirs"] and list_targets("us-east-1") == []


def test_cli_create_list_status_delete(lam, capsys, monkeypatch):
    common = ["--region", "us-east-1"]
    code = main(["create", "--target", "lambda", "--name", "sd-cli", "--image-uri", IMAGE, "--memory", "6144",
                 "--timeout", "600", "--model", "demo", "--yes", *common])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Lambda 6144 MB (3.5 vCPU)" in out and "one 512x512 SD 1.5 image, 20 steps" in out  # the price first
    for step in ("[role]", "[logs]", "[function]", "[wait]", "[url]"):
        assert step in out
    assert "Function URL (AWS_IAM): https://" in out and "--backend lambda --function sd-cli" in out

    assert main(["list", *common]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["sd-cli", "Active", "lambda", "6144", "MB", "-", "0m", "$0.00", "idle"]
    assert main(["status", "--target", "lambda", "--name", "sd-cli", *common]) == 0
    assert "function URL https://" in capsys.readouterr().out

    monkeypatch.setattr(sys, "stdin", open(__file__))  # not a terminal: cannot ask  # noqa: SIM115
    assert main(["delete", "--target", "lambda", "--name", "sd-cli", *common]) == 3
    assert main(["delete", "--target", "lambda", "--name", "sd-cli", "--yes", *common]) == 0
    assert "verified: nothing is left" in capsys.readouterr().out
    lam.assert_nothing_left()

    code = main(["create", "--target", "lambda", "--name", "bad name", "--image-uri", IMAGE, "--yes", *common])
    assert code == 1 and "name: 'bad name' is not a valid function name" in capsys.readouterr().out
    code = main(["create", "--target", "lambda", "--name", "sd-url", "--image-uri", IMAGE, "--public-url", "--yes",
                 *common])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "WARNING: --public-url" in out and "Function URL (NONE)" in out
    assert main(["delete", "--target", "lambda", "--name", "sd-url", "--yes", *common]) == 0
    lam.assert_nothing_left()


def test_price_per_image_from_the_shipped_table():
    assert target.LAMBDA_PRICES_AS_OF == "2025-06"
    big, small = target.seconds_per_image(10240), target.seconds_per_image(4096)
    assert big < small  # more memory, more vCPUs, faster
    assert target.price_per_image(10240) == pytest.approx(target.price_per_image(4096), rel=0.01)
    assert target.price_per_image(10240, "bf16") < target.price_per_image(10240, "f32")
    text = target.describe_lambda_price(2048)
    assert "too little for SD 1.5" in text and "$0 while idle" in text and "2025-06" in text
    assert "needs 10240 MB on CPUs without bf16" in target.describe_lambda_price(6144)
    assert "needs" not in target.describe_lambda_price(10240)


def test_settings_lists_lambda_functions_and_needs_a_target(lam, monkeypatch):
    import gradio as gr

    from studio.ui import settings

    target.create_function(plan(), poll_seconds=0.01)
    monkeypatch.setattr(gr, "Info", lambda *a, **k: None)
    backend, choices = settings.list_lambda_functions()
    assert backend["value"] == "lambda" and choices["choices"] == ["sd-fn"] and choices["value"] == "sd-fn"
    with pytest.raises(gr.Error, match="function: give a Lambda function name"):
        settings.use_backend(None, "lambda", "  ")
    assert target.delete_function("sd-fn", "us-east-1").ok
