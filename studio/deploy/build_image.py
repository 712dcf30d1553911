"""The project's own serving image, built without local Docker: S3 build context -> AWS CodeBuild -> ECR.

On a SageMaker notebook or Studio there is usually no Docker. `python -m studio.deploy build-image --repo NAME`:
1. zips the build context (Dockerfile, pyproject.toml, requirements.txt, app.py, studio/ without test support) and
   uploads it to S3 ({bucket}/{prefix}/build/{repo}/{stamp}/context.zip, tagged);
2. makes sure of an ECR repository, a CodeBuild service role (trusted by codebuild.amazonaws.com, allowed to read
   that context, push to that repository and write its logs) and a CodeBuild project (privileged mode, for the
   Docker daemon), all tagged `sd-studio`;
3. starts the build (docker build, docker push), streams its CloudWatch log lines, and returns the image URI.

`create --image URI` then deploys that image (its `serve` is the FastAPI app, whose /ping is 503 until the model
is loaded). `delete_build_artifacts(repo)` (`delete --all-artifacts`) removes what this created, only what carries
our tags. A failed build-image run rolls back what it created, like `create`.
"""

from __future__ import annotations

import io
import json
import logging
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio import aws
from studio.deploy.create import Rollback, _ensure_bucket
from studio.deploy.plan import DEFAULT_PREFIX, DeployError, PlanError, ProgressCallback, resolve_region
from studio.deploy.resources import TAG_KEY, s3_join, stamp

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTEXT_FILES = ("Dockerfile", "pyproject.toml", "requirements.txt", "app.py")
BUILD_IMAGE = "aws/codebuild/standard:7.0"  # Docker inside, x86_64
COMPUTE_TYPE = "BUILD_GENERAL1_LARGE"  # torch's CUDA wheels need the disk and memory
BUILD_TIMEOUT_MINUTES = 60
TAG_REPO = "sd-studio:repo"
BUILDSPEC = """version: 0.2
phases:
  pre_build:
    commands:
      - aws ecr get-login-password | docker login --username AWS --password-stdin "$REGISTRY"
  build:
    commands:
      - docker build -t "$IMAGE_URI" .
  post_build:
    commands:
      - docker push "$IMAGE_URI"
"""


def names(repo: str) -> dict[str, str]:
    """The CodeBuild project, its role and its log group for an image repository."""
    project = f"sd-studio-build-{repo}".replace("/", "-")[:150]
    return {"project": project, "role": project[:64], "log_group": f"/aws/codebuild/{project}"}


def check_repo_name(repo: object) -> str:
    """An ECR repository name (lower case, digits, . _ - /), else PlanError("repo")."""
    import re

    if not isinstance(repo, str) or not re.fullmatch(
        r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*", repo
    ):
        raise PlanError("repo", f"{repo!r} is not an ECR repository name (lower-case letters, digits, . _ - /)")
    if len(repo) > 200:
        raise PlanError("repo", f"is {len(repo)} characters; ECR allows 256 and the build names need room")
    return repo


def build_context(root: Path = REPO_ROOT) -> bytes:
    """The Docker build context as a zip (what CodeBuild's S3 source unpacks): the Dockerfile's inputs only."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in CONTEXT_FILES:
            path = root / name
            if not path.is_file():
                raise DeployError("context", f"{path} is missing; build-image runs from a checkout of the project")
            archive.write(path, name)
        for path in sorted((root / "studio").rglob("*")):
            rel = path.relative_to(root)
            if path.is_file() and "__pycache__" not in rel.parts and rel.parts[1:2] != ("testing",):
                archive.write(path, rel.as_posix())
        archive.writestr("buildspec.yml", BUILDSPEC)
    return buffer.getvalue()


@dataclass
class BuildResult:
    """What build_image made: the image URI and the names of what it created."""

    image_uri: str
    repository: str
    project: str
    role_arn: str
    context_uri: str
    build_id: str
    log_lines: list[str] = field(default_factory=list)


@dataclass
class _Build:
    """One build_image run: region, account, clients and the rollback of what it created."""

    repo: str
    region: str
    account: str
    bucket: str
    prefix: str
    session: Any
    say: ProgressCallback
    rollback: Rollback
    poll_seconds: float
    tag: str

    def client(self, service: str) -> Any:
        return aws.client(service, self.region, session=self.session)

    @property
    def registry(self) -> str:
        return f"{self.account}.dkr.ecr.{self.region}.amazonaws.com"

    @property
    def image_uri(self) -> str:
        return f"{self.registry}/{self.repo}:{self.tag}"

    def tags(self) -> dict[str, str]:
        return {TAG_KEY: "true", TAG_REPO: self.repo}


def build_image(
    repo: str,
    progress: ProgressCallback | None = None,
    *,
    region: str | None = None,
    bucket: str | None = None,
    prefix: str = DEFAULT_PREFIX,
    tag: str | None = None,
    poll_seconds: float = 10.0,
    timeout_seconds: float = BUILD_TIMEOUT_MINUTES * 60 + 300,
    session: Any = None,
) -> BuildResult:
    """Build the project's Dockerfile on CodeBuild and push it to ECR (see the module docstring)."""

    def say(step: str, message: str) -> None:
        log.info("%s: %s", step, message)
        if progress is not None:
            progress(step, message)

    check_repo_name(repo)
    region = resolve_region(region)
    session = session or aws.new_session(region)
    account = aws.client("sts", region, session=session).get_caller_identity()["Account"]
    run = _Build(
        repo,
        region,
        account,
        bucket or f"sagemaker-{region}-{account}",
        prefix,
        session,
        say,
        Rollback(say),
        poll_seconds,
        tag or stamp(),
    )
    step = "context"
    try:
        context_uri = _upload_context(run)
        step = "repository"
        _ensure_repository(run)
        step = "role"
        role_arn = _ensure_role(run, context_uri)
        step = "project"
        _ensure_project(run, context_uri, role_arn)
        step = "build"
        build_id, lines = _run_build(run, timeout_seconds)
    except BaseException as exc:
        failed = run.rollback.run()
        if not isinstance(exc, Exception) or (isinstance(exc, PlanError) and not failed):
            raise
        message = exc.message if isinstance(exc, DeployError) else f"{aws.error_code(exc) or type(exc).__name__}: "
        message = message if isinstance(exc, DeployError) else message + aws.error_message(exc)
        left = f"; could not remove: {', '.join(failed)}" if failed else " (rolled back what this run created)"
        say(step, f"FAILED: {message}{left}")
        raise DeployError(step, message + left) from exc
    say("done", f"pushed {run.image_uri}")
    return BuildResult(run.image_uri, repo, names(repo)["project"], role_arn, context_uri, build_id, lines)


def _upload_context(run: _Build) -> str:
    s3 = run.client("s3")
    _ensure_bucket(s3, run.bucket, run.region, run.rollback, run.say)
    data = build_context()
    key = f"{s3_join(run.prefix, 'build', run.repo, run.tag)}/context.zip"
    s3.put_object(Bucket=run.bucket, Key=key, Body=data, Tagging=f"{TAG_KEY}=true")
    run.rollback.push(f"build context s3://{run.bucket}/{key}", lambda: s3.delete_object(Bucket=run.bucket, Key=key))
    run.say("context", f"uploaded the build context ({len(data) / 1e6:.1f} MB) to s3://{run.bucket}/{key}")
    return f"s3://{run.bucket}/{key}"


def _ensure_repository(run: _Build) -> None:
    ecr = run.client("ecr")
    try:
        found = ecr.describe_repositories(repositoryNames=[run.repo])["repositories"][0]
    except Exception as exc:
        if aws.error_code(exc) != "RepositoryNotFoundException":
            raise
    else:
        tags = {t["Key"]: t["Value"] for t in ecr.list_tags_for_resource(resourceArn=found["repositoryArn"])["tags"]}
        if tags.get(TAG_KEY) != "true":
            raise PlanError("repo", f"the ECR repository {run.repo!r} exists and was not made by SD Studio")
        run.say("repository", f"using the ECR repository {found['repositoryUri']}")
        return
    tags = [{"Key": k, "Value": v} for k, v in run.tags().items()]
    made = ecr.create_repository(repositoryName=run.repo, tags=tags, imageScanningConfiguration={"scanOnPush": True})
    run.rollback.push(f"ECR repository {run.repo}", lambda: ecr.delete_repository(repositoryName=run.repo, force=True))
    run.say("repository", f"created the ECR repository {made['repository']['repositoryUri']}")


def _role_policy(run: _Build, context_uri: str) -> dict[str, Any]:
    bucket, key = aws.parse_s3_uri(context_uri, "context")
    group = names(run.repo)["log_group"]
    logs_arn = f"arn:aws:logs:{run.region}:{run.account}:log-group:{group}"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
             "Resource": [logs_arn, f"{logs_arn}:*"]},
            {"Effect": "Allow", "Action": ["s3:GetObject", "s3:GetObjectVersion"],
             "Resource": f"arn:aws:s3:::{bucket}/{key.rsplit('/', 1)[0]}/*"},
            {"Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
            {"Effect": "Allow",
             "Action": ["ecr:BatchCheckLayerAvailability", "ecr:InitiateLayerUpload", "ecr:UploadLayerPart",
                        "ecr:CompleteLayerUpload", "ecr:PutImage", "ecr:BatchGetImage"],
             "Resource": f"arn:aws:ecr:{run.region}:{run.account}:repository/{run.repo}"},
        ],
    }  # fmt: skip


def _ensure_role(run: _Build, context_uri: str) -> str:
    iam, role = run.client("iam"), names(run.repo)["role"]
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "codebuild.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
    try:
        arn = iam.get_role(RoleName=role)["Role"]["Arn"]
        tags = {t["Key"]: t["Value"] for t in iam.list_role_tags(RoleName=role).get("Tags", [])}
        if tags.get(TAG_KEY) != "true":
            raise PlanError("repo", f"the IAM role {role!r} exists and was not made by SD Studio")
        run.say("role", f"using the CodeBuild role {arn}")
    except Exception as exc:
        if isinstance(exc, PlanError) or not aws.is_not_found(exc):
            raise
        tags = [{"Key": k, "Value": v} for k, v in run.tags().items()]
        arn = iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(trust), Tags=tags)["Role"]["Arn"]
        run.rollback.push(f"IAM role {role}", lambda: _delete_role(iam, role))
        run.say("role", f"created the CodeBuild service role {arn}")
    iam.put_role_policy(
        RoleName=role, PolicyName="sd-studio-build", PolicyDocument=json.dumps(_role_policy(run, context_uri))
    )
    return arn


def _delete_role(iam: Any, role: str) -> None:
    for policy in iam.list_role_policies(RoleName=role).get("PolicyNames", []):
        iam.delete_role_policy(RoleName=role, PolicyName=policy)
    iam.delete_role(RoleName=role)


def _project_args(run: _Build, context_uri: str, role_arn: str) -> dict[str, Any]:
    bucket, key = aws.parse_s3_uri(context_uri, "context")
    project = names(run.repo)
    return {
        "name": project["project"],
        "description": f"SD Studio: builds the serving image into ECR {run.repo}",
        "source": {"type": "S3", "location": f"{bucket}/{key}", "buildspec": BUILDSPEC},
        "artifacts": {"type": "NO_ARTIFACTS"},
        "environment": {
            "type": "LINUX_CONTAINER",
            "image": BUILD_IMAGE,
            "computeType": COMPUTE_TYPE,
            "privilegedMode": True,  # docker build needs the Docker daemon
            "environmentVariables": [
                {"name": "REGISTRY", "value": run.registry, "type": "PLAINTEXT"},
                {"name": "IMAGE_URI", "value": run.image_uri, "type": "PLAINTEXT"},
            ],
        },
        "serviceRole": role_arn,
        "timeoutInMinutes": BUILD_TIMEOUT_MINUTES,
        "logsConfig": {"cloudWatchLogs": {"status": "ENABLED", "groupName": project["log_group"]}},
        "tags": [{"key": k, "value": v} for k, v in run.tags().items()],
    }


def _ensure_project(run: _Build, context_uri: str, role_arn: str) -> None:
    """Create the project (or point ours at this context); IAM may take a few seconds to let CodeBuild use a new
    role, so "not authorized" is retried for up to a minute."""
    codebuild, args = run.client("codebuild"), _project_args(run, context_uri, role_arn)
    existing = codebuild.batch_get_projects(names=[args["name"]]).get("projects", [])
    if existing:
        tags = {t["key"]: t["value"] for t in existing[0].get("tags", [])}
        if tags.get(TAG_KEY) != "true":
            raise PlanError("repo", f"the CodeBuild project {args['name']!r} exists and was not made by SD Studio")
        codebuild.update_project(**{k: v for k, v in args.items() if k != "tags"})
        run.say("project", f"updated the CodeBuild project {args['name']}")
        return
    deadline = time.monotonic() + 60
    while True:
        try:
            codebuild.create_project(**args)
            break
        except Exception as exc:
            if "not authorized" not in aws.error_message(exc).lower() or time.monotonic() > deadline:
                raise
            run.say("project", "waiting for IAM to let CodeBuild use the new role")
            time.sleep(min(5.0, run.poll_seconds))
    run.rollback.push(f"CodeBuild project {args['name']}", lambda: codebuild.delete_project(name=args["name"]))
    run.say("project", f"created the CodeBuild project {args['name']} (privileged mode, {COMPUTE_TYPE})")


def _run_build(run: _Build, timeout_seconds: float) -> tuple[str, list[str]]:
    """Start the build, stream its log lines, wait for the end; DeployError unless it SUCCEEDED."""
    codebuild, logs = run.client("codebuild"), run.client("logs")
    build_id = codebuild.start_build(projectName=names(run.repo)["project"])["build"]["id"]
    run.say("build", f"started CodeBuild build {build_id} (docker build + push, typically 10-20 minutes)")
    deadline, token, lines = time.monotonic() + timeout_seconds, None, []
    while True:
        build = codebuild.batch_get_builds(ids=[build_id])["builds"][0]
        token = _stream_logs(run, logs, build.get("logs") or {}, token, lines)
        status = build.get("buildStatus", "IN_PROGRESS")
        if status == "SUCCEEDED":
            return build_id, lines
        if status != "IN_PROGRESS":
            phase = next((p for p in build.get("phases", []) if p.get("phaseStatus") not in (None, "SUCCEEDED")), {})
            detail = "; ".join(c.get("message", "") for c in phase.get("contexts", []) if c.get("message"))
            tail = "\n".join(f"    {line}" for line in lines[-20:])
            raise DeployError("build", f"build {build_id} {status} in {phase.get('phaseType', '?')}: {detail}\n{tail}")
        if time.monotonic() > deadline:
            codebuild.stop_build(id=build_id)
            raise DeployError("build", f"build {build_id} did not finish within {timeout_seconds:.0f} s; stopped it")
        time.sleep(run.poll_seconds)


def _stream_logs(run: _Build, logs: Any, where: dict[str, Any], token: str | None, lines: list[str]) -> str | None:
    """Say the build's new log lines; returns the token to continue from."""
    group, stream = where.get("groupName"), where.get("streamName")
    if not group or not stream:
        return token
    args: dict[str, Any] = {"logGroupName": group, "logStreamName": stream, "startFromHead": True}
    if token:
        args["nextToken"] = token
    try:
        answer = logs.get_log_events(**args)
    except Exception as exc:  # noqa: BLE001 - the stream appears a little after the build starts
        if aws.is_not_found(exc):
            return token
        raise
    for event in answer.get("events", []):
        line = event.get("message", "").rstrip()
        lines.append(line)
        run.say("build", line)
    return answer.get("nextForwardToken", token)


@dataclass
class BuildCleanup:
    """What delete_build_artifacts removed and anything still left (should be empty)."""

    repo: str
    deleted: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.leftovers


def delete_build_artifacts(
    repo: str,
    region: str | None = None,
    progress: ProgressCallback | None = None,
    *,
    bucket: str | None = None,
    prefix: str = DEFAULT_PREFIX,
    session: Any = None,
) -> BuildCleanup:
    """Remove what build_image made for `repo` (only what carries our tags): the CodeBuild project and its log
    group, the service role, the ECR repository with its images, the uploaded build contexts; then check."""

    def say(message: str) -> None:
        log.info("delete build artifacts of %s: %s", repo, message)
        if progress is not None:
            progress("delete", message)

    check_repo_name(repo)
    region = resolve_region(region)
    session = session or aws.new_session(region)
    account = aws.client("sts", region, session=session).get_caller_identity()["Account"]
    bucket = bucket or f"sagemaker-{region}-{account}"
    report, found = BuildCleanup(repo), _build_resources(repo, region, session, bucket, prefix)
    s3 = aws.client("s3", region, session=session)
    if found:  # the bucket goes too when it is ours and nothing else is left in it (create makes it again)
        found.append((f"bucket s3://{bucket} (empty)", lambda: _delete_if_empty(s3, bucket)))
    for description, remove in found:
        try:
            remove()
        except _NotApplicable:
            continue
        except Exception as exc:
            if not aws.is_not_found(exc) and aws.error_code(exc) != "RepositoryNotFoundException":
                report.leftovers.append(f"{description} ({aws.error_code(exc)}: {aws.error_message(exc)})")
                say(f"could not delete {description}: {aws.error_message(exc)}")
            continue
        report.deleted.append(description)
        say(f"deleted {description}")
    report.leftovers += [d for d, _ in _build_resources(repo, region, session, bucket, prefix)]
    say("verified: nothing is left" if report.ok else f"left over: {', '.join(report.leftovers)}")
    return report


def _build_resources(repo: str, region: str, session: Any, bucket: str, prefix: str) -> list[tuple[str, Any]]:
    """(description, delete function) for each of our build resources of `repo` that exists now."""
    from studio.deploy.delete import _delete_keys, _s3_keys

    clients = {name: aws.client(name, region, session=session) for name in ("codebuild", "logs", "iam", "ecr", "s3")}
    codebuild, logs, iam, ecr, s3 = clients.values()
    project, found = names(repo), []
    projects = codebuild.batch_get_projects(names=[project["project"]]).get("projects", [])
    if projects and {t["key"]: t["value"] for t in projects[0].get("tags", [])}.get(TAG_KEY) == "true":
        found.append(
            (f"CodeBuild project {project['project']}", lambda: codebuild.delete_project(name=project["project"]))
        )
        groups = logs.describe_log_groups(logGroupNamePrefix=project["log_group"]).get("logGroups", [])
        if any(g["logGroupName"] == project["log_group"] for g in groups):
            found.append(
                (f"log group {project['log_group']}", lambda: logs.delete_log_group(logGroupName=project["log_group"]))
            )
    if _owned_role(iam, project["role"]):
        found.append((f"IAM role {project['role']}", lambda: _delete_role(iam, project["role"])))
    if _owned_repository(ecr, repo):
        found.append((f"ECR repository {repo}", lambda: ecr.delete_repository(repositoryName=repo, force=True)))
    keys = _s3_keys(s3, bucket, f"{s3_join(prefix, 'build', repo)}/")
    if keys:
        found.append((f"{len(keys)} build context file(s) in s3://{bucket}", lambda: _delete_keys(s3, bucket, keys)))
    return found


def _delete_if_empty(s3: Any, bucket: str) -> None:
    if not _empty_owned_bucket(s3, bucket):
        raise _NotApplicable()
    s3.delete_bucket(Bucket=bucket)


class _NotApplicable(Exception):
    """A conditional deletion that did not apply (not counted as deleted or left over)."""


def _empty_owned_bucket(s3: Any, bucket: str) -> bool:
    try:
        tags = s3.get_bucket_tagging(Bucket=bucket).get("TagSet", [])
        empty = s3.list_objects_v2(Bucket=bucket, MaxKeys=1).get("KeyCount", 0) == 0
    except Exception as exc:
        if aws.is_not_found(exc) or aws.error_code(exc) in ("NoSuchTagSet", "NoSuchTagSetError"):
            return False
        raise
    return empty and {t["Key"]: t["Value"] for t in tags}.get(TAG_KEY) == "true"


def _owned_role(iam: Any, role: str) -> bool:
    try:
        tags = iam.list_role_tags(RoleName=role).get("Tags", [])
    except Exception as exc:
        if aws.is_not_found(exc):
            return False
        raise
    return {t["Key"]: t["Value"] for t in tags}.get(TAG_KEY) == "true"


def _owned_repository(ecr: Any, repo: str) -> bool:
    try:
        arn = ecr.describe_repositories(repositoryNames=[repo])["repositories"][0]["repositoryArn"]
    except Exception as exc:
        if aws.error_code(exc) == "RepositoryNotFoundException":
            return False
        raise
    tags = ecr.list_tags_for_resource(resourceArn=arn).get("tags", [])
    return {t["Key"]: t["Value"] for t in tags}.get(TAG_KEY) == "true"
