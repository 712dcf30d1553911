"""The AWS Lambda target: create, list, status and delete a function running studio.serving.aws_lambda, and its price.

`python -m studio.deploy create --target lambda --name N --image-uri ECR_URI [--memory 10240] [--timeout 900]`
creates, as explicit steps with the deploy rollback stack (studio.deploy.create.Rollback):
1. an execution role `sd-studio-<name>` (unless --role is given): Lambda may assume it; it may write the function's
   logs and read the s3:// model / write the s3:// output the function is configured with, nothing else;
2. the log group /aws/lambda/<name> with a retention (Lambda would create it at the first invoke, kept forever);
3. the function: PackageType Image, the memory, timeout and /tmp size asked for, the STUDIO_* environment;
4. a function URL, AuthType AWS_IAM unless `public_url` (AuthType NONE, with the public invoke permission and a
   warning): anyone with the URL could then generate at the account's expense.
Everything is tagged like the SageMaker resources (sd-studio=true, sd-studio:mode=lambda, sd-studio:endpoint=<name>).
`delete` removes the URL config, the function, the role and the log group it created — only what carries our tags
— and verifies that nothing is left. `list_functions` is what `list` shows beside the endpoints.

The price of an image comes from the shipped, dated table in studio.deploy.lambda_pricing (`describe_lambda_price`);
listing and deleting are in studio.deploy.lambda_inventory. Both are re-exported here: this module is the target's API.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from studio import aws
from studio.deploy.create import Rollback
from studio.deploy.lambda_inventory import (
    FUNCTION_NAME,
    MODE,
    TAG_ROLE,
    FunctionInfo,
    check_function_name,
    delete_function,
    delete_role,
    function_status,
    list_functions,
)
from studio.deploy.lambda_pricing import (
    LAMBDA_PRICE_NOTE,
    LAMBDA_PRICES_AS_OF,
    describe_lambda_price,
    price_per_image,
    seconds_per_image,
)
from studio.deploy.plan import DeployError, PlanError, ProgressCallback, resolve_region
from studio.deploy.resources import tag_dict, tags

log = logging.getLogger(__name__)

ECR_IMAGE = re.compile(
    r"^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?/[a-z0-9][a-z0-9._/-]*(:[\w.-]{1,128}|@sha256:[0-9a-f]{64})$"
)
LOG_RETENTION_DAYS = 14
URL_PERMISSION_ID = "sd-studio-public-function-url"
ACTIVE_TIMEOUT_SECONDS = 900.0  # an image function is Pending while Lambda optimises the image (minutes)
ROLE_PROPAGATION_SECONDS = 90.0  # a new IAM role can take ~10 s (rarely more) before Lambda may assume it


# ---- the plan --------------------------------------------------------------------------------------------------
@dataclass
class LambdaPlan:
    """Everything `create_function` needs; `validate()` checks it (PlanError naming the field) before any change."""

    name: str
    image_uri: str
    memory: int = 10240  # MB, 128-10240 (vCPUs grow with it)
    timeout: int = 900  # seconds, 1-900
    ephemeral_storage: int = 512  # MB of /tmp, 512-10240 (an s3:// model is copied there)
    role: str | None = None  # None: create sd-studio-<name>
    public_url: bool = False  # function URL AuthType NONE instead of AWS_IAM
    model: str | None = None  # STUDIO_MODEL: a path in the image, "demo", or s3://... (copied to /tmp)
    s3_output: str | None = None  # STUDIO_S3_OUTPUT
    s3_allowed_prefixes: tuple[str, ...] = ()  # STUDIO_S3_ALLOWED_PREFIXES
    env: dict[str, str] = field(default_factory=dict)
    region: str | None = None

    @property
    def auth_type(self) -> str:
        return "NONE" if self.public_url else "AWS_IAM"

    @property
    def role_name(self) -> str:
        return f"sd-studio-{self.name}"

    def environment(self) -> dict[str, str]:
        values = dict(self.env)
        if self.model:
            values["STUDIO_MODEL"] = self.model
        if self.s3_output:
            values["STUDIO_S3_OUTPUT"] = self.s3_output
        if self.s3_allowed_prefixes:
            values["STUDIO_S3_ALLOWED_PREFIXES"] = ",".join(self.s3_allowed_prefixes)
        return values

    def validate(self, *, check_aws: bool = True, session: Any = None) -> LambdaPlan:
        check_function_name(self.name)
        match = ECR_IMAGE.match(self.image_uri or "")
        if not match:
            raise PlanError(
                "image_uri",
                f"{self.image_uri!r} is not an ECR image URI (ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPO:TAG or "
                "@sha256:...): Lambda runs container images from ECR only — build Dockerfile.lambda and push it",
            )
        for name, value, low, high in (
            ("memory", self.memory, 128, 10240),
            ("timeout", self.timeout, 1, 900),
            ("ephemeral_storage", self.ephemeral_storage, 512, 10240),
        ):
            if not isinstance(value, int) or not low <= value <= high:
                raise PlanError(name, f"must be a whole number from {low} to {high}, got {value!r}")
        for name, value in (("model", self.model), ("s3_output", self.s3_output), *_prefixes(self)):
            if value and value.startswith("s3://"):
                try:
                    aws.parse_s3_uri(value, name, need_key=False)
                except ValueError as exc:
                    raise PlanError(name, str(exc)) from None
        if self.role is not None and not re.match(r"^arn:aws[\w-]*:iam::\d{12}:role/[\w+=,.@/-]+$", self.role):
            raise PlanError("role", f"{self.role!r} is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)")
        region = resolve_region(self.region or match.group(2))
        if region != match.group(2):
            raise PlanError("image_uri", f"the image is in {match.group(2)} but the function would be in {region}")
        self.region = region
        if check_aws:
            _check_aws(self, session or aws.new_session(region))
        return self


def _prefixes(plan: LambdaPlan) -> list[tuple[str, str]]:
    return [("s3_allowed_prefixes", p) for p in plan.s3_allowed_prefixes]


def _check_aws(plan: LambdaPlan, session: Any) -> None:
    """Read-only checks: credentials, the name is free, a given role exists."""
    from botocore.exceptions import BotoCoreError, ClientError

    if session.get_credentials() is None:
        raise PlanError("credentials", "no AWS credentials found; configure them (e.g. `aws configure`)")
    client = aws.client("lambda", plan.region, session=session)
    try:
        client.get_function(FunctionName=plan.name)
    except ClientError as exc:
        if not aws.is_not_found(exc):
            raise PlanError("name", aws.describe_failure(exc, plan.name)) from None
    except BotoCoreError as exc:
        raise PlanError("region", aws.describe_failure(exc, "the Lambda API")) from None
    else:
        raise PlanError("name", f"a Lambda function named {plan.name!r} already exists; choose another name")
    if plan.role is None:
        return
    try:
        aws.client("iam", plan.region, session=session).get_role(RoleName=plan.role.rsplit("/", 1)[-1])
    except ClientError as exc:
        raise PlanError("role", aws.describe_failure(exc, plan.role)) from None


# ---- create ----------------------------------------------------------------------------------------------------
@dataclass
class LambdaDeployResult:
    """What `create_function` made."""

    function_name: str
    function_arn: str
    function_url: str
    auth_type: str
    role_arn: str
    role_created: bool
    log_group: str
    memory: int
    timeout: int
    region: str
    seconds: float = 0.0


@dataclass
class _Run:
    """One create_function run: the plan, its clients, progress and rollback."""

    plan: LambdaPlan
    session: Any
    say: ProgressCallback
    rollback: Rollback
    poll_seconds: float

    def client(self, service: str) -> Any:
        return aws.client(service, self.plan.region, session=self.session)

    @property
    def log_group(self) -> str:
        return f"/aws/lambda/{self.plan.name}"

    @property
    def tags(self) -> dict[str, str]:
        return tag_dict(tags(MODE, self.plan.name))


def create_function(
    plan: LambdaPlan,
    progress: ProgressCallback | None = None,
    *,
    poll_seconds: float = 5.0,
    session: Any = None,
) -> LambdaDeployResult:
    """Create the function and its function URL as explicit steps (role, logs, function, wait, url), reporting each
    via progress(step, message). A failed step removes what this run created (newest first) and raises
    DeployError(step, ...); an invalid plan raises PlanError before anything is created."""

    def say(step: str, message: str) -> None:
        log.info("%s: %s", step, message)
        if progress is not None:
            progress(step, message)

    started = time.perf_counter()
    plan.validate(session=session)
    run = _Run(plan, session or aws.new_session(plan.region), say, Rollback(say), poll_seconds)
    step = "role"
    try:
        role_arn, created = _ensure_role(run)
        step = "logs"
        _create_log_group(run)
        step = "function"
        arn = _create(run, role_arn, created)
        step = "wait"
        _wait_active(run)
        step = "url"
        url = _create_url(run)
    except BaseException as exc:
        left = run.rollback.run()
        reason = aws.describe_failure(exc, plan.name) if not isinstance(exc, DeployError) else exc.message
        suffix = f"; could NOT remove: {', '.join(left)}" if left else "; everything created was removed"
        if isinstance(exc, Exception):
            raise DeployError(step, reason + suffix) from exc
        raise
    return LambdaDeployResult(
        function_name=plan.name,
        function_arn=arn,
        function_url=url,
        auth_type=plan.auth_type,
        role_arn=role_arn,
        role_created=created,
        log_group=run.log_group,
        memory=plan.memory,
        timeout=plan.timeout,
        region=plan.region or "",
        seconds=round(time.perf_counter() - started, 1),
    )


def _partition(region: str) -> str:
    return "aws-cn" if region.startswith("cn-") else "aws-us-gov" if region.startswith("us-gov-") else "aws"


def role_policy(plan: LambdaPlan) -> dict[str, Any]:
    """What the created role may do: write the function's logs; read the s3:// model and the allowed input
    prefixes; write the s3:// output. Nothing else."""
    part, region = _partition(plan.region or ""), plan.region
    statements: list[dict[str, Any]] = [
        {
            "Effect": "Allow",
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": f"arn:{part}:logs:{region}:*:log-group:/aws/lambda/{plan.name}:*",
        }
    ]
    reads = [p for p in (plan.model, *plan.s3_allowed_prefixes) if p and p.startswith("s3://")]
    writes = [p for p in (plan.s3_output, *plan.s3_allowed_prefixes) if p and p.startswith("s3://")]
    for action, locations in (("s3:GetObject", reads), ("s3:PutObject", writes)):
        if locations:
            resources = [f"arn:{part}:s3:::{'/'.join(aws.parse_s3_uri(p, 's3', need_key=False))}*" for p in locations]
            statements.append({"Effect": "Allow", "Action": [action], "Resource": sorted(set(resources))})
    if plan.model and plan.model.startswith("s3://"):
        bucket, key = aws.parse_s3_uri(plan.model, "model", need_key=False)
        statements.append(
            {
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": f"arn:{part}:s3:::{bucket}",
                "Condition": {"StringLike": {"s3:prefix": [f"{key}*"]}},
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}


def _ensure_role(run: _Run) -> tuple[str, bool]:
    plan = run.plan
    if plan.role:
        run.say("role", f"using the execution role {plan.role}")
        return plan.role, False
    iam = run.client("iam")
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
    role = iam.create_role(
        RoleName=plan.role_name,
        AssumeRolePolicyDocument=json.dumps(trust),
        Description=f"SD Studio Lambda function {plan.name}: logs and its S3 locations only",
        Tags=tags(MODE, plan.name),
    )["Role"]
    run.rollback.push(f"role {plan.role_name}", lambda: delete_role(iam, plan.role_name))
    iam.put_role_policy(RoleName=plan.role_name, PolicyName="sd-studio", PolicyDocument=json.dumps(role_policy(plan)))
    run.say("role", f"created the execution role {plan.role_name}")
    return role["Arn"], True


def _create_log_group(run: _Run) -> None:
    from botocore.exceptions import ClientError

    logs = run.client("logs")
    try:
        logs.create_log_group(logGroupName=run.log_group, tags=run.tags)
    except ClientError as exc:
        if aws.error_code(exc) != "ResourceAlreadyExistsException":
            raise
        run.say("logs", f"the log group {run.log_group} exists already; keeping it")
        return
    run.rollback.push(f"log group {run.log_group}", lambda: logs.delete_log_group(logGroupName=run.log_group))
    logs.put_retention_policy(logGroupName=run.log_group, retentionInDays=LOG_RETENTION_DAYS)
    run.say("logs", f"created the log group {run.log_group} ({LOG_RETENTION_DAYS} days retention)")


def _create(run: _Run, role_arn: str, role_created: bool) -> str:
    from botocore.exceptions import ClientError

    plan, client = run.plan, run.client("lambda")
    function_tags = {**run.tags, **({TAG_ROLE: plan.role_name} if role_created else {})}
    request = {
        "FunctionName": plan.name,
        "PackageType": "Image",
        "Code": {"ImageUri": plan.image_uri},
        "Role": role_arn,
        "MemorySize": plan.memory,
        "Timeout": plan.timeout,
        "EphemeralStorage": {"Size": plan.ephemeral_storage},
        "Environment": {"Variables": plan.environment()},
        "Description": "SD Studio: studio.serving.aws_lambda.handler",
        "Tags": function_tags,
    }
    deadline = time.monotonic() + ROLE_PROPAGATION_SECONDS
    while True:
        try:
            arn = client.create_function(**request)["FunctionArn"]
            break
        except ClientError as exc:  # a new role takes a few seconds before Lambda may assume it
            if "assume" not in aws.error_message(exc).lower() or time.monotonic() > deadline:
                raise
            run.say("function", "waiting for the new role to reach Lambda…")
            time.sleep(run.poll_seconds)
    run.rollback.push(f"function {plan.name}", lambda: client.delete_function(FunctionName=plan.name))
    run.say("function", f"created {plan.name} ({plan.memory} MB, {plan.timeout} s, image {plan.image_uri})")
    return arn


def _wait_active(run: _Run) -> None:
    client, name = run.client("lambda"), run.plan.name
    deadline = time.monotonic() + ACTIVE_TIMEOUT_SECONDS
    while True:
        config = client.get_function_configuration(FunctionName=name)
        state = config.get("State", "Active")
        if state == "Active":
            run.say("wait", f"{name} is Active")
            return
        if state == "Failed":
            raise DeployError("wait", f"{name} is Failed: {config.get('StateReason', 'no reason given')}")
        if time.monotonic() > deadline:
            raise DeployError("wait", f"{name} is still {state} after {ACTIVE_TIMEOUT_SECONDS:.0f} s")
        run.say("wait", f"{name} is {state} (Lambda prepares the image)…")
        time.sleep(run.poll_seconds)


def _create_url(run: _Run) -> str:
    plan, client = run.plan, run.client("lambda")
    url = client.create_function_url_config(FunctionName=plan.name, AuthType=plan.auth_type)["FunctionUrl"]
    run.rollback.push(f"function URL of {plan.name}", lambda: client.delete_function_url_config(FunctionName=plan.name))
    if plan.public_url:
        client.add_permission(
            FunctionName=plan.name,
            StatementId=URL_PERMISSION_ID,
            Action="lambda:InvokeFunctionUrl",
            Principal="*",
            FunctionUrlAuthType="NONE",
        )
        log.warning("function URL %s is PUBLIC (AuthType NONE): anyone with it can generate at your expense", url)
        run.say("url", f"PUBLIC function URL {url} (AuthType NONE): anyone who has it can use it at your expense")
    else:
        run.say("url", f"function URL {url} (AuthType AWS_IAM: callers sign with SigV4)")
    return url


__all__ = [
    "FUNCTION_NAME",
    "LAMBDA_PRICES_AS_OF",
    "LAMBDA_PRICE_NOTE",
    "MODE",
    "FunctionInfo",
    "LambdaDeployResult",
    "LambdaPlan",
    "check_function_name",
    "create_function",
    "delete_function",
    "describe_lambda_price",
    "function_status",
    "list_functions",
    "price_per_image",
    "role_policy",
    "seconds_per_image",
]
