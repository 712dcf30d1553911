"""The one listing of SageMaker endpoints: status, list, and the start-up warning about running endpoints.

The CLI's `list`/`status`, the Settings tab (its Deploy panel and its "List InService SageMaker endpoints" button)
and the studio's start-up warning all read endpoints here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from studio import aws
from studio.deploy.autoscaling import scalable_targets
from studio.deploy.plan import DeployError, EndpointNotFound, resolve_region
from studio.deploy.pricing import price_per_hour
from studio.deploy.resources import TAG_KEY, TAG_MODE, sagemaker_tags

log = logging.getLogger(__name__)

TABLE_HEADERS = ["name", "status", "mode", "instance type", "instances", "age", "est. $/h"]


@dataclass
class EndpointInfo:
    """One endpoint as `list`/`status` show it."""

    name: str
    status: str
    mode: str
    instance_type: str
    instance_count: int
    created: datetime | None
    price_per_hour: float | None  # per instance
    failure_reason: str | None = None
    endpoint_config_name: str = ""
    model_names: list[str] = field(default_factory=list)
    min_instances: int | None = None
    max_instances: int | None = None
    async_output_path: str | None = None
    async_failure_path: str | None = None

    @property
    def estimated_cost_per_hour(self) -> float | None:
        """Current instances x on-demand price (an async endpoint scaled to zero costs nothing)."""
        if self.price_per_hour is None:
            return None
        return self.price_per_hour * self.instance_count

    @property
    def age(self) -> str:
        if self.created is None:
            return "?"
        seconds = max(0, int((datetime.now(UTC) - self.created).total_seconds()))
        days, rest = divmod(seconds, 86400)
        hours, rest = divmod(rest, 3600)
        minutes = rest // 60
        if days:
            return f"{days}d {hours}h"
        if hours:
            return f"{hours}h {minutes}m"
        return f"{minutes}m"

    def row(self) -> list[str]:
        """name, status, mode, instance type, instances, age, $/h — the table the CLI and the UI show."""
        cost = self.estimated_cost_per_hour
        return [
            self.name,
            self.status,
            self.mode,
            self.instance_type,
            str(self.instance_count),
            self.age,
            "?" if cost is None else f"${cost:.2f}",
        ]


def _endpoint_info(sm: Any, name: str, tags: dict[str, str] | None = None) -> EndpointInfo:
    """Describe the endpoint and its config (instance type and async paths live on the config)."""
    from botocore.exceptions import ClientError

    try:
        endpoint = sm.describe_endpoint(EndpointName=name)
    except ClientError as exc:
        if aws.is_not_found(exc):
            raise EndpointNotFound("status", f"no endpoint named {name!r}") from exc
        raise
    config_name = endpoint.get("EndpointConfigName", "")
    instance_type, model_names, async_config = "?", [], None
    try:
        config = sm.describe_endpoint_config(EndpointConfigName=config_name)
        variants = config.get("ProductionVariants", [])
        if variants:
            instance_type = variants[0].get("InstanceType", "?")
        model_names = [v["ModelName"] for v in variants if v.get("ModelName")]
        async_config = config.get("AsyncInferenceConfig")
    except ClientError as exc:
        if not aws.is_not_found(exc):
            raise
    if tags is None:
        tags = sagemaker_tags(sm, endpoint["EndpointArn"])
    count = sum(int(v.get("CurrentInstanceCount", 0) or 0) for v in endpoint.get("ProductionVariants", []))
    output = (async_config or {}).get("OutputConfig", {})
    return EndpointInfo(
        name=name,
        status=endpoint["EndpointStatus"],
        mode=tags.get(TAG_MODE) or ("async" if async_config else "realtime"),
        instance_type=instance_type,
        instance_count=count,
        created=endpoint.get("CreationTime"),
        price_per_hour=price_per_hour(instance_type),
        failure_reason=endpoint.get("FailureReason"),
        endpoint_config_name=config_name,
        model_names=model_names,
        async_output_path=output.get("S3OutputPath"),
        async_failure_path=output.get("S3FailurePath"),
    )


def status(name: str, region: str | None = None, *, session: Any = None) -> EndpointInfo:
    """Status of one endpoint, with its autoscaling range. Raises EndpointNotFound."""
    region = resolve_region(region)
    session = session or aws.new_session(region)
    info = _endpoint_info(aws.client("sagemaker", region, session=session), name)
    targets = scalable_targets(aws.client("application-autoscaling", region, session=session), name)
    if targets:
        info.min_instances, info.max_instances = targets[0]["MinCapacity"], targets[0]["MaxCapacity"]
    return info


def list_endpoints(
    region: str | None = None, *, session: Any = None, quick: bool = False, all_in_service: bool = False
) -> list[EndpointInfo]:
    """Endpoints in the region, newest first: those tagged sd-studio=true (in any state), or with `all_in_service`
    every InService endpoint whoever deployed it (the endpoints the studio can switch to).

    `quick`: short timeouts, one attempt (the start-up check). AWS failures raise DeployError("list", ...) with a
    one-line message that never contains credentials; a missing region raises PlanError("region").
    """
    from botocore.exceptions import BotoCoreError, ClientError

    region = resolve_region(region)
    try:
        sm = aws.client("sagemaker", region, session=session or aws.new_session(region), quick=quick)
        return _list(sm, all_in_service=all_in_service)
    except (ClientError, BotoCoreError) as exc:
        raise DeployError("list", aws.describe_failure(exc, f"listing SageMaker endpoints in {region}")) from exc


def _list(sm: Any, *, all_in_service: bool) -> list[EndpointInfo]:
    query: dict[str, str] = {"SortBy": "CreationTime", "SortOrder": "Descending"}
    if all_in_service:
        query["StatusEquals"] = "InService"
    found = []
    for page in sm.get_paginator("list_endpoints").paginate(**query):
        for summary in page["Endpoints"]:
            tags = sagemaker_tags(sm, summary["EndpointArn"])
            if not all_in_service and tags.get(TAG_KEY) != "true":
                continue
            try:
                found.append(_endpoint_info(sm, summary["EndpointName"], tags))
            except EndpointNotFound:
                continue  # deleted between list and describe
    return found


def list_targets(region: str | None = None, *, session: Any = None) -> list[Any]:
    """What `list` shows: SD Studio's SageMaker endpoints, then its Lambda functions (studio.deploy.lambda_inventory;
    same row() columns, nothing billed while idle)."""
    from studio.deploy.lambda_inventory import list_functions

    session = session or aws.new_session(resolve_region(region))
    return [*list_endpoints(region, session=session), *list_functions(region, session=session)]


def running_endpoints_warning(region: str | None = None) -> str | None:
    """A start-up warning naming sd-studio endpoints that exist (and may cost money), or None.

    Never raises and never waits long: no region/credentials or an unreachable API just means no warning.
    """
    try:
        session = aws.new_session(region)
        region = region or session.region_name
        if not region or session.get_credentials() is None:
            return None
        endpoints = [e for e in list_endpoints(region, session=session, quick=True) if e.status != "Deleting"]
    except Exception as exc:  # noqa: BLE001 - a warning must never stop the studio from starting
        log.debug("could not check for running SageMaker endpoints: %s", exc)
        return None
    if not endpoints:
        return None
    costs = [e.estimated_cost_per_hour or 0.0 for e in endpoints]
    parts = [f"{e.name} ({e.status}, {e.instance_type} x{e.instance_count}, {e.mode})" for e in endpoints]
    return (
        f"{len(endpoints)} SageMaker endpoint(s) deployed by SD Studio exist in {region}: {', '.join(parts)}; "
        f"about ${sum(costs):.2f}/h right now. Delete them in Settings → Deploy (or `python -m studio.deploy delete "
        "--name NAME`) when you no longer need them."
    )
