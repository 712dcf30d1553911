"""Names and tags of what a deploy creates, shared by create, autoscaling, inventory and delete.

Everything created is tagged `sd-studio=true` (plus mode and endpoint name). The tags are how the inventory lists
our endpoints and how delete finds what belongs to one — and refuses what we did not tag.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

TAG_KEY = "sd-studio"  # value "true" on everything deploy creates
TAG_MODE = "sd-studio:mode"  # "realtime" | "async"
TAG_ENDPOINT = "sd-studio:endpoint"  # the endpoint name a model/config/alarm belongs to
TAG_ARTIFACTS = "sd-studio:artifacts"  # s3:// prefix of the files this deploy uploaded (on the model)

VARIANT = "AllTraffic"
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
_STAMP_LENGTH = len("20260101-000000")


def tags(mode: str, endpoint: str, **extra: str) -> list[dict[str, str]]:
    """The SageMaker/CloudWatch tag list for a resource of `endpoint`."""
    values = {TAG_KEY: "true", TAG_MODE: mode, TAG_ENDPOINT: endpoint, **extra}
    return [{"Key": key, "Value": value} for key, value in values.items()]


def tag_dict(tag_list: list[dict[str, str]]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in tag_list}


def sagemaker_tags(sm: Any, arn: str) -> dict[str, str]:
    """The tags of a SageMaker resource as a dict."""
    return tag_dict(sm.list_tags(ResourceArn=arn).get("Tags", []))


def is_owned(sm: Any, arn: str, endpoint: str) -> bool:
    """True when the SageMaker resource carries our tags for `endpoint`."""
    found = sagemaker_tags(sm, arn)
    return found.get(TAG_KEY) == "true" and found.get(TAG_ENDPOINT) == endpoint


def stamp() -> str:
    """The UTC time of a run, as model/config names and S3 keys carry it."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def name_stem(endpoint: str) -> str:
    """The endpoint name as it starts model/config names (cut so `{stem}-{stamp}` fits in 63 characters)."""
    return endpoint[: 63 - _STAMP_LENGTH - 1].rstrip("-")


def resource_name(endpoint: str, run_stamp: str) -> str:
    """Model/config name: `{name}-{stamp}`, cut so it stays within SageMaker's 63 characters."""
    return f"{name_stem(endpoint)}-{run_stamp}"


def s3_join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def resource_id(endpoint: str) -> str:
    """The Application Auto Scaling id of the endpoint's variant."""
    return f"endpoint/{endpoint}/variant/{VARIANT}"


def backlog_alarm_name(endpoint: str) -> str:
    return f"{endpoint}-has-backlog-without-capacity"


def policy_names(endpoint: str) -> dict[str, str]:
    return {
        "invocations": f"{endpoint}-invocations-target",
        "backlog": f"{endpoint}-backlog-target",
        "scale-out-from-zero": f"{endpoint}-scale-out-from-zero",
    }
