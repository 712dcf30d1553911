"""Delete an endpoint and everything sd-studio created for it, then verify nothing is left.

Only what carries our tags is deleted: an endpoint without the sd-studio tag is refused, and configs, models and
alarms someone else made are kept. Deleting is idempotent: what is already gone is skipped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from studio import aws
from studio.deploy.autoscaling import endpoint_alarms, scalable_targets, scaling_policies, target_keys
from studio.deploy.plan import DeployError, ProgressCallback, check_endpoint_name, resolve_region
from studio.deploy.resources import TAG_ARTIFACTS, TAG_KEY, is_owned, name_stem, resource_id, sagemaker_tags

log = logging.getLogger(__name__)


@dataclass
class DeleteReport:
    """What `delete()` removed, what was already gone, and anything still left (should be empty)."""

    name: str
    deleted: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.leftovers and not self.errors

    def summary(self) -> str:
        if self.ok and not self.deleted:
            return f"{self.name}: nothing to delete (already gone)"
        lines = [f"{self.name}: deleted {len(self.deleted)} resource(s)"]
        lines += [f"  - {d}" for d in self.deleted]
        if self.errors:
            lines += [f"  ERROR {e}" for e in self.errors]
        if self.leftovers:
            lines += [f"  STILL PRESENT {x}" for x in self.leftovers]
        else:
            lines.append("  verified: nothing is left")
        return "\n".join(lines)


@dataclass
class _Found:
    """What belongs to the endpoint: the endpoint itself (if it exists), configs, models, uploaded artifacts."""

    endpoint_exists: bool
    configs: list[str]
    models: list[str]
    artifacts: list[str]


@dataclass
class Deletion:
    """One delete run (an endpoint's, a Lambda function's): its report and how it reports progress; subclasses
    add their clients."""

    name: str
    progress: ProgressCallback | None
    report: DeleteReport

    def say(self, message: str) -> None:
        log.info("delete %s: %s", self.name, message)
        if self.progress is not None:
            self.progress("delete", message)

    def attempt(self, description: str, action: Callable[[], Any]) -> None:
        """Run one deletion; "not found" means already gone, other AWS errors are recorded and reported."""
        from botocore.exceptions import ClientError

        try:
            action()
        except ClientError as exc:
            if aws.is_not_found(exc):
                return
            self.report.errors.append(f"{description}: {aws.error_code(exc)}: {aws.error_message(exc)}")
            self.say(f"could not delete {description}: {aws.error_message(exc)}")
            return
        self.report.deleted.append(description)
        self.say(f"deleted {description}")


@dataclass
class _Deletion(Deletion):
    """One delete() run: its clients, its report and how it reports progress."""

    sm: Any
    autoscaling: Any
    cloudwatch: Any
    s3: Any
    poll_seconds: float


def delete(
    name: str,
    delete_artifacts: bool = False,
    region: str | None = None,
    progress: ProgressCallback | None = None,
    *,
    poll_seconds: float = 10.0,
    session: Any = None,
) -> DeleteReport:
    """Remove the endpoint and everything sd-studio created for it, in order, then verify nothing is left.

    Order: scalable target, scaling policies, alarms, endpoint (waiting until gone), endpoint config(s), model(s),
    and with `delete_artifacts` the uploaded model files (async outputs are the user's images and are kept).
    Idempotent: what is already gone is skipped. Resources not tagged sd-studio are left alone; an endpoint without
    the tag is refused (DeployError) so the studio never deletes someone else's endpoint.
    """
    check_endpoint_name(name)
    region = resolve_region(region)
    session = session or aws.new_session(region)
    run = _Deletion(
        name=name,
        sm=aws.client("sagemaker", region, session=session),
        autoscaling=aws.client("application-autoscaling", region, session=session),
        cloudwatch=aws.client("cloudwatch", region, session=session),
        s3=aws.client("s3", region, session=session),
        progress=progress,
        poll_seconds=poll_seconds,
        report=DeleteReport(name),
    )
    found = _find(run.sm, name)
    _remove(run, found, delete_artifacts)
    _verify(run, found, delete_artifacts)
    report = run.report
    run.say("verified: nothing is left" if report.ok else f"left over: {', '.join(report.leftovers + report.errors)}")
    return report


def _find(sm: Any, name: str) -> _Found:
    """The endpoint's config and models, plus tagged orphans of earlier (half-finished) runs."""
    configs, models = _find_owned(sm, name)
    endpoint = _our_endpoint(sm, name)
    if endpoint is not None:
        configs = list(dict.fromkeys([endpoint["EndpointConfigName"], *configs]))
    models += _models_of_configs(sm, name, configs, models)
    configs = [c for c in configs if _config_is_owned(sm, c, name)]
    return _Found(endpoint is not None, configs, models, _artifact_uris(sm, models))


def _find_owned(sm: Any, name: str) -> tuple[list[str], list[str]]:
    """Configs and models tagged for endpoint `name` (also orphans from a half-finished run)."""
    configs, models = [], []
    stem = name_stem(name)
    for page in sm.get_paginator("list_endpoint_configs").paginate(NameContains=stem):
        configs += [
            c["EndpointConfigName"] for c in page["EndpointConfigs"] if is_owned(sm, c["EndpointConfigArn"], name)
        ]
    for page in sm.get_paginator("list_models").paginate(NameContains=stem):
        models += [m["ModelName"] for m in page["Models"] if is_owned(sm, m["ModelArn"], name)]
    return configs, models


def _our_endpoint(sm: Any, name: str) -> dict[str, Any] | None:
    """The endpoint's description, None when it does not exist; DeployError when it is not ours."""
    from botocore.exceptions import ClientError

    try:
        endpoint = sm.describe_endpoint(EndpointName=name)
    except ClientError as exc:
        if not aws.is_not_found(exc):
            raise
        return None
    if sagemaker_tags(sm, endpoint["EndpointArn"]).get(TAG_KEY) != "true":
        raise DeployError(
            "delete",
            f"endpoint {name!r} was not deployed by SD Studio (no sd-studio tag); "
            "not deleting it — use the AWS console or CLI if you really mean to",
        )
    return endpoint


def _models_of_configs(sm: Any, name: str, configs: list[str], known: list[str]) -> list[str]:
    """Our models used by our configs that `known` does not list yet."""
    from botocore.exceptions import ClientError

    more: list[str] = []
    for config_name in configs:
        try:
            config = sm.describe_endpoint_config(EndpointConfigName=config_name)
        except ClientError as exc:
            if aws.is_not_found(exc):
                continue
            raise
        if not is_owned(sm, config["EndpointConfigArn"], name):
            continue  # a config someone else made for this endpoint: not ours to delete
        for variant in config.get("ProductionVariants", []):
            model_name = variant.get("ModelName")
            if not model_name or model_name in known or model_name in more:
                continue
            try:
                model = sm.describe_model(ModelName=model_name)
            except ClientError as exc:
                if aws.is_not_found(exc):
                    continue
                raise
            if is_owned(sm, model["ModelArn"], name):
                more.append(model_name)
    return more


def _config_is_owned(sm: Any, config_name: str, name: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        arn = sm.describe_endpoint_config(EndpointConfigName=config_name)["EndpointConfigArn"]
    except ClientError as exc:
        if aws.is_not_found(exc):
            return False
        raise
    return is_owned(sm, arn, name)


def _artifact_uris(sm: Any, models: list[str]) -> list[str]:
    """The s3:// prefixes of the files the models' deploys uploaded (their sd-studio:artifacts tag)."""
    from botocore.exceptions import ClientError

    artifacts = []
    for model_name in models:
        try:
            uri = sagemaker_tags(sm, sm.describe_model(ModelName=model_name)["ModelArn"]).get(TAG_ARTIFACTS)
        except ClientError as exc:
            if not aws.is_not_found(exc):
                raise
            continue
        if uri:
            artifacts.append(uri)
    return artifacts


def _remove(run: _Deletion, found: _Found, delete_artifacts: bool) -> None:
    """Delete in dependency order: autoscaling, alarms, endpoint, configs, models, artifacts."""
    name, sm, autoscaling = run.name, run.sm, run.autoscaling
    keys = target_keys(name)
    if scalable_targets(autoscaling, name):
        run.attempt(f"scalable target {resource_id(name)}", lambda: autoscaling.deregister_scalable_target(**keys))
    # Deregistering removes the policies on AWS; delete any that remain explicitly (and on emulators).
    for policy in scaling_policies(autoscaling, name):
        run.attempt(
            f"scaling policy {policy}", lambda p=policy: autoscaling.delete_scaling_policy(PolicyName=p, **keys)
        )
    alarms = endpoint_alarms(run.cloudwatch, name)
    if alarms:
        run.attempt(f"alarm(s) {', '.join(alarms)}", lambda: run.cloudwatch.delete_alarms(AlarmNames=alarms))
    if found.endpoint_exists:
        run.say(f"deleting endpoint {name} and waiting until it is gone")
        run.attempt(f"endpoint {name}", lambda: delete_endpoint_and_wait(sm, name, run.poll_seconds))
    for config_name in found.configs:
        run.attempt(
            f"endpoint config {config_name}", lambda c=config_name: sm.delete_endpoint_config(EndpointConfigName=c)
        )
    for model_name in found.models:
        run.attempt(f"model {model_name}", lambda m=model_name: sm.delete_model(ModelName=m))
    if delete_artifacts:
        for uri in found.artifacts:
            bucket, prefix = aws.parse_s3_uri(uri, TAG_ARTIFACTS, need_key=False)
            keys_found = _s3_keys(run.s3, bucket, prefix)
            if keys_found:
                run.attempt(
                    f"{len(keys_found)} artifact file(s) under {uri}",
                    lambda b=bucket, k=keys_found: _delete_keys(run.s3, b, k),
                )


def _verify(run: _Deletion, found: _Found, delete_artifacts: bool) -> None:
    """Record in the report whatever still exists after `_remove` (including orphans found anew)."""
    name, sm, leftovers = run.name, run.sm, run.report.leftovers
    if _exists(lambda: sm.describe_endpoint(EndpointName=name)):
        leftovers.append(f"endpoint {name}")
    leftovers += [
        f"endpoint config {c}"
        for c in found.configs
        if _exists(lambda c=c: sm.describe_endpoint_config(EndpointConfigName=c))
    ]
    leftovers += [f"model {m}" for m in found.models if _exists(lambda m=m: sm.describe_model(ModelName=m))]
    orphan_configs, orphan_models = _find_owned(sm, name)
    leftovers += [f"endpoint config {c}" for c in orphan_configs if f"endpoint config {c}" not in leftovers]
    leftovers += [f"model {m}" for m in orphan_models if f"model {m}" not in leftovers]
    if scalable_targets(run.autoscaling, name):
        leftovers.append(f"scalable target {resource_id(name)}")
    leftovers += [f"scaling policy {p}" for p in scaling_policies(run.autoscaling, name)]
    leftovers += [f"alarm {a}" for a in endpoint_alarms(run.cloudwatch, name)]
    if delete_artifacts:
        for uri in found.artifacts:
            bucket, prefix = aws.parse_s3_uri(uri, TAG_ARTIFACTS, need_key=False)
            if _s3_keys(run.s3, bucket, prefix):
                leftovers.append(f"artifacts under {uri}")


def delete_endpoint_and_wait(sm: Any, name: str, poll_seconds: float, timeout_seconds: float = 1200) -> None:
    """Delete the endpoint and wait until it is gone (a config/model cannot go while the endpoint uses it)."""
    sm.delete_endpoint(EndpointName=name)
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if not _exists(lambda: sm.describe_endpoint(EndpointName=name)):
            return
        time.sleep(poll_seconds)
    raise DeployError("delete", f"endpoint {name} still exists {timeout_seconds:.0f} s after deleting it")


def _exists(describe: Callable[[], Any]) -> bool:
    from botocore.exceptions import ClientError

    try:
        describe()
    except ClientError as exc:
        if aws.is_not_found(exc):
            return False
        raise
    return True


def _s3_keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    from botocore.exceptions import ClientError

    keys = []
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys += [obj["Key"] for obj in page.get("Contents", [])]
    except ClientError as exc:
        if aws.is_not_found(exc):
            return []
        raise
    return keys


def _delete_keys(s3: Any, bucket: str, keys: list[str]) -> None:
    for start in range(0, len(keys), 1000):
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[start : start + 1000]]})
