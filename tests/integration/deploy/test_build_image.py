"""studio.deploy.build_image against moto (S3, ECR, IAM, CodeBuild, CloudWatch Logs): the build context, what is
created and tagged, the image URI, a failed build rolled back, and delete_build_artifacts leaving nothing."""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from studio.deploy import build_image as builder
from studio.deploy.plan import DeployError, PlanError

REPO = "sd-studio-serve"


def test_the_build_context_holds_what_the_dockerfile_copies():
    with zipfile.ZipFile(io.BytesIO(builder.build_context())) as archive:
        files = set(archive.namelist())
    assert {"Dockerfile", "pyproject.toml", "requirements.txt", "app.py", "buildspec.yml"} <= files
    assert "studio/serving/__main__.py" in files and any(name.startswith("studio/configs/") for name in files)
    assert not any(name.startswith("studio/testing/") or "__pycache__" in name for name in files)


def test_build_image_creates_tags_builds_and_delete_leaves_nothing(account, progress):
    result = builder.build_image(REPO, progress, poll_seconds=0.01)
    assert result.image_uri.startswith(f"123456789012.dkr.ecr.us-east-1.amazonaws.com/{REPO}:")
    steps = progress.steps()
    assert steps[-1] == "done" and {"context", "repository", "role", "project", "build"} <= set(steps)

    ecr = account.client("ecr")
    repository = ecr.describe_repositories(repositoryNames=[REPO])["repositories"][0]
    tags = {t["Key"]: t["Value"] for t in ecr.list_tags_for_resource(resourceArn=repository["repositoryArn"])["tags"]}
    assert tags == {"sd-studio": "true", "sd-studio:repo": REPO}

    names = builder.names(REPO)
    iam = account.client("iam")
    role = iam.get_role(RoleName=names["role"])["Role"]
    trust = role["AssumeRolePolicyDocument"]
    assert "codebuild.amazonaws.com" in (trust if isinstance(trust, str) else json.dumps(trust))
    assert {t["Key"]: t["Value"] for t in iam.list_role_tags(RoleName=names["role"])["Tags"]}["sd-studio"] == "true"
    policy = iam.get_role_policy(RoleName=names["role"], PolicyName="sd-studio-build")["PolicyDocument"]
    assert f"repository/{REPO}" in (policy if isinstance(policy, str) else json.dumps(policy))

    project = account.client("codebuild").batch_get_projects(names=[names["project"]])["projects"][0]
    assert project["environment"]["privilegedMode"] is True and project["serviceRole"] == result.role_arn
    assert {t["key"]: t["value"] for t in project["tags"]}["sd-studio"] == "true"
    assert project["source"]["type"] == "S3" and project["source"]["location"] in result.context_uri

    bucket, key = result.context_uri.removeprefix("s3://").split("/", 1)
    s3 = account.client("s3")
    assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] > 1000
    assert s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"] == [{"Key": "sd-studio", "Value": "true"}]

    report = builder.delete_build_artifacts(REPO, progress=progress)
    assert report.ok, report.leftovers
    assert ecr.describe_repositories()["repositories"] == []
    assert account.client("codebuild").list_projects()["projects"] == []
    assert not [r for r in iam.list_roles()["Roles"] if r["RoleName"] == names["role"]]
    assert s3.list_buckets()["Buckets"] == []
    assert builder.delete_build_artifacts(REPO).deleted == []  # idempotent


def test_a_failed_build_rolls_back_what_it_created(account, progress, monkeypatch):
    def failing(self, **kwargs):
        raise RuntimeError("the build fleet is on fire")

    monkeypatch.setattr(builder, "_run_build", lambda run, timeout: failing(None))
    with pytest.raises(DeployError, match="^build: RuntimeError: the build fleet is on fire"):
        builder.build_image(REPO, progress, poll_seconds=0.01)
    assert account.client("ecr").describe_repositories()["repositories"] == []
    assert account.client("codebuild").list_projects()["projects"] == []
    assert account.client("s3").list_buckets()["Buckets"] == []


def test_someone_elses_repository_is_not_used(account):
    account.client("ecr").create_repository(repositoryName=REPO)
    with pytest.raises(PlanError, match="not made by SD Studio"):
        builder.build_image(REPO, poll_seconds=0.01)
    assert builder.delete_build_artifacts(REPO).deleted == []  # and not deleted either
    assert account.client("ecr").describe_repositories()["repositories"][0]["repositoryName"] == REPO


@pytest.mark.parametrize("repo", ["Upper", "a b", "", "-x"])
def test_repository_names_are_checked(repo):
    with pytest.raises(PlanError, match="^validate: repo: "):
        builder.check_repo_name(repo)


def test_cli_build_image_create_with_it_and_delete_all_artifacts(account, capsys):
    """build-image prints the URI; create --image deploys the project's own serve; delete --all-artifacts removes
    the endpoint and everything build-image made for its image."""
    from studio.deploy.__main__ import main

    assert main(["build-image", "--repo", REPO, "--poll-seconds", "0.01"]) == 0
    out = capsys.readouterr().out
    uri = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("Image: "))
    assert uri.startswith(f"123456789012.dkr.ecr.us-east-1.amazonaws.com/{REPO}:")
    common = ["--instance-type", "ml.g4dn.xlarge", "--role", account.ROLE, "--yes", "--poll-seconds", "0.01"]
    argv = ["create", "--name", "sd-own", "--model", "s3://b-1/m.tar.gz", "--image", uri, "--skip-verify", *common]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"image: the project's own serving image {uri}" in out and "own serving image" in out
    sm = account.client("sagemaker")
    (model,) = sm.list_models()["Models"]
    assert sm.describe_model(ModelName=model["ModelName"])["PrimaryContainer"]["Image"] == uri

    assert main(["delete", "--name", "sd-own", "--all-artifacts", "--yes", "--poll-seconds", "0.01"]) == 0
    out = capsys.readouterr().out
    assert f"deleted ECR repository {REPO}" in out and "verified: nothing is left" in out
    account.assert_nothing_left()
    assert account.client("ecr").describe_repositories()["repositories"] == []
    assert account.client("codebuild").list_projects()["projects"] == []
    assert account.client("s3").list_buckets()["Buckets"] == []
