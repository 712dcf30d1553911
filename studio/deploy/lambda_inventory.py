"""The Lambda target's listing and deletion: what `python -m studio.deploy list` shows beside the endpoints, `status
--target lambda`, and `delete --target lambda`, which removes everything create made and verifies nothing is left.

Only what carries the sd-studio tags for this function is deleted: a function without them is refused, a role or a
log group without them is kept. Deleting is idempotent: what is already gone is skipped.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from studio import aws
from studio.deploy.delete import DeleteReport, Deletion
from studio.deploy.plan import DeployError, EndpointNotFound, PlanError, ProgressCallback, resolve_region
from studio.deploy.resources import TAG_ENDPOINT, TAG_KEY, TAG_MODE

MODE = "lambda"  # the sd-studio:mode tag of everything the Lambda target creates
TAG_ROLE = "sd-studio:role"  # on the function: the execution role its deploy created for it
FUNCTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,53}$")  # 54 = 64 (IAM role name) - len("sd-studio-")


def check_function_name(name: object) -> str:
    """`name` when it can name the function and its role (sd-studio-<name>), else PlanError("name")."""
    if not isinstance(name, str) or not FUNCTION_NAME.match(name):
        raise PlanError(
            "name",
            f"{name!r} is not a valid function name here: 1-54 letters, digits, hyphens and underscores, starting "
            "with a letter or digit (the role sd-studio-<name> must fit IAM's 64 characters)",
        )
    return name


def delete_role(iam: Any, name: str) -> None:
    """Delete an IAM role with its inline policies."""
    for policy in iam.list_role_policies(RoleName=name).get("PolicyNames", []):
        iam.delete_role_policy(RoleName=name, PolicyName=policy)
    iam.delete_role(RoleName=name)


@dataclass
class FunctionInfo:
    """One SD Studio Lambda function as `list`/`status` show it (the same columns as EndpointInfo)."""

    name: str
    status: str  # Lambda's State: Pending, Active, Inactive, Failed
    memory: int
    timeout: int
    modified: datetime | None
    url: str | None = None
    auth_type: str | None = None
    image_uri: str = ""
    mode: str = MODE
    instance_type: str = ""  # filled from memory: what the table's "instance type" column shows

    def __post_init__(self) -> None:
        self.instance_type = self.instance_type or f"{self.memory} MB"

    @property
    def estimated_cost_per_hour(self) -> float:
        """Nothing while idle: Lambda bills per request (see studio.deploy.lambda_pricing for a price per image)."""
        return 0.0

    @property
    def age(self) -> str:
        if self.modified is None:
            return "?"
        seconds = max(0, int((datetime.now(UTC) - self.modified).total_seconds()))
        days, rest = divmod(seconds, 86400)
        hours, minutes = rest // 3600, rest % 3600 // 60
        return f"{days}d {hours}h" if days else f"{hours}h {minutes}m" if hours else f"{minutes}m"

    def row(self) -> list[str]:
        """name, status, mode, instance type, instances, age, $/h — the columns of studio.deploy.inventory."""
        return [self.name, self.status, self.mode, self.instance_type, "-", self.age, "$0.00 idle"]


def _modified(text: str | None) -> datetime | None:
    """Lambda's LastModified ("2026-11-30T12:00:00.123+0000", always UTC) to the second."""
    try:
        return datetime.strptime((text or "")[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return None


def _info(client: Any, config: dict[str, Any]) -> FunctionInfo:
    from botocore.exceptions import ClientError

    name = config["FunctionName"]
    url = auth = None
    try:
        url_config = client.get_function_url_config(FunctionName=name)
        url, auth = url_config.get("FunctionUrl"), url_config.get("AuthType")
    except ClientError as exc:
        if not aws.is_not_found(exc):
            raise
    return FunctionInfo(
        name=name,
        status=config.get("State") or "Active",
        memory=int(config.get("MemorySize", 0)),
        timeout=int(config.get("Timeout", 0)),
        modified=_modified(config.get("LastModified")),
        url=url,
        auth_type=auth,
        image_uri=str(config.get("ImageUri") or ""),
    )


def _ours(tags: dict[str, str], name: str) -> bool:
    return tags.get(TAG_KEY) == "true" and tags.get(TAG_MODE) == MODE and tags.get(TAG_ENDPOINT) == name


def list_functions(region: str | None = None, *, session: Any = None) -> list[FunctionInfo]:
    """The Lambda functions SD Studio deployed in the region (tagged sd-studio, mode lambda), newest first.
    AWS failures raise DeployError("list", ...) with a one-line message without credentials."""
    from botocore.exceptions import BotoCoreError, ClientError

    region = resolve_region(region)
    try:
        client = aws.client("lambda", region, session=session or aws.new_session(region))
        found = []
        for page in client.get_paginator("list_functions").paginate():
            for config in page.get("Functions", []):
                tags = client.list_tags(Resource=config["FunctionArn"]).get("Tags", {})
                if _ours(tags, config["FunctionName"]):
                    found.append(_info(client, config))
    except (ClientError, BotoCoreError) as exc:
        raise DeployError("list", aws.describe_failure(exc, f"listing Lambda functions in {region}")) from exc
    return sorted(found, key=lambda f: f.modified or datetime.min.replace(tzinfo=UTC), reverse=True)


def function_status(name: str, region: str | None = None, *, session: Any = None) -> FunctionInfo:
    """One function (with its URL); EndpointNotFound when there is none by that name."""
    from botocore.exceptions import ClientError

    region = resolve_region(region)
    client = aws.client("lambda", region, session=session or aws.new_session(region))
    try:
        config = client.get_function_configuration(FunctionName=check_function_name(name))
    except ClientError as exc:
        if aws.is_not_found(exc):
            raise EndpointNotFound("status", f"no Lambda function named {name!r}") from exc
        raise
    return _info(client, config)


@dataclass
class _Deletion(Deletion):
    """One delete_function() run: its clients, its report and how it reports progress."""

    client: Any
    iam: Any
    logs: Any


def delete_function(
    name: str, region: str | None = None, progress: ProgressCallback | None = None, *, session: Any = None
) -> DeleteReport:
    """Remove the function's URL config, the function, the role and the log group this deploy created (only what
    carries our tags), then verify that nothing is left. Idempotent. A function without the sd-studio tags is
    refused (DeployError): the studio never deletes a function it did not create."""
    check_function_name(name)
    region = resolve_region(region)
    session = session or aws.new_session(region)
    run = _Deletion(
        name=name,
        client=aws.client("lambda", region, session=session),
        iam=aws.client("iam", region, session=session),
        logs=aws.client("logs", region, session=session),
        report=DeleteReport(name),
        progress=progress,
    )
    role = _owned_role(run, _function_tags(run))
    run.attempt(f"function URL of {name}", lambda: run.client.delete_function_url_config(FunctionName=name))
    run.attempt(f"function {name}", lambda: run.client.delete_function(FunctionName=name))
    if role:
        run.attempt(f"role {role}", lambda: delete_role(run.iam, role))
    group = f"/aws/lambda/{name}"
    group_tags = _log_group_tags(run, group)
    if group_tags is not None and _ours(group_tags, name):
        run.attempt(f"log group {group}", lambda: run.logs.delete_log_group(logGroupName=group))
    elif group_tags is not None:
        run.say(f"kept the log group {group}: SD Studio did not create it")
    _verify(run, role)
    run.say("verified: nothing is left" if run.report.ok else f"left over: {', '.join(run.report.leftovers)}")
    return run.report


def _function_tags(run: _Deletion) -> dict[str, str] | None:
    """The function's tags (None when it does not exist); DeployError when it is not ours."""
    from botocore.exceptions import ClientError

    try:
        arn = run.client.get_function(FunctionName=run.name)["Configuration"]["FunctionArn"]
    except ClientError as exc:
        if aws.is_not_found(exc):
            return None
        raise DeployError("delete", aws.describe_failure(exc, run.name)) from exc
    found = run.client.list_tags(Resource=arn).get("Tags", {})
    if not _ours(found, run.name):
        raise DeployError(
            "delete",
            f"Lambda function {run.name!r} was not deployed by SD Studio (no sd-studio tags); not deleting it",
        )
    return found


def _owned_role(run: _Deletion, function_tags: dict[str, str] | None) -> str | None:
    """The role to delete: the one the function's tags name, else (function already gone) sd-studio-<name> when it
    carries our tags."""
    from botocore.exceptions import ClientError

    name = (function_tags or {}).get(TAG_ROLE) or f"sd-studio-{run.name}"
    try:
        role_tags = {t["Key"]: t["Value"] for t in run.iam.list_role_tags(RoleName=name).get("Tags", [])}
    except ClientError as exc:
        if aws.is_not_found(exc):
            return None
        raise DeployError("delete", aws.describe_failure(exc, name)) from exc
    return name if _ours(role_tags, run.name) else None


def _log_group_tags(run: _Deletion, group: str) -> dict[str, str] | None:
    """The log group's tags, or None when it does not exist."""
    groups = run.logs.describe_log_groups(logGroupNamePrefix=group).get("logGroups", [])
    match = next((g for g in groups if g["logGroupName"] == group), None)
    if match is None:
        return None
    return run.logs.list_tags_log_group(logGroupName=group).get("tags", {})


def _verify(run: _Deletion, role: str | None) -> None:
    """Check that the URL config, the function, our role and our log group are gone."""
    from botocore.exceptions import ClientError

    def gone(check: Callable[[], Any]) -> bool:
        try:
            check()
        except ClientError as exc:
            return aws.is_not_found(exc)
        return False

    name = run.name
    if not gone(lambda: run.client.get_function_url_config(FunctionName=name)):
        run.report.leftovers.append(f"function URL of {name}")
    if not gone(lambda: run.client.get_function(FunctionName=name)):
        run.report.leftovers.append(f"function {name}")
    if role and not gone(lambda: run.iam.get_role(RoleName=role)):
        run.report.leftovers.append(f"role {role}")
    tags = _log_group_tags(run, f"/aws/lambda/{name}")
    if tags is not None and _ours(tags, name):
        run.report.leftovers.append(f"log group /aws/lambda/{name}")
