"""Autoscaling of a deployed endpoint: the scalable target, its policies, and the scale-out-from-zero alarm.

Real-time endpoints track invocations per instance. Async endpoints track the queue per instance and can scale to
zero; since target tracking cannot scale out from 0 instances (there is no per-instance metric then), a step policy
fired by an alarm on HasBacklogWithoutCapacity does it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from studio.deploy.plan import DeployPlan, ProgressCallback
from studio.deploy.resources import (
    SCALABLE_DIMENSION,
    TAG_ENDPOINT,
    TAG_KEY,
    backlog_alarm_name,
    policy_names,
    resource_id,
    tag_dict,
    tags,
)

if TYPE_CHECKING:
    from studio.deploy.create import Rollback


def target_keys(endpoint: str) -> dict[str, str]:
    """The arguments that name the endpoint's scalable target in every Application Auto Scaling call."""
    return {
        "ServiceNamespace": "sagemaker",
        "ResourceId": resource_id(endpoint),
        "ScalableDimension": SCALABLE_DIMENSION,
    }


def scalable_targets(autoscaling: Any, endpoint: str) -> list[dict[str, Any]]:
    """The endpoint's registered scalable target (a list of zero or one)."""
    return autoscaling.describe_scalable_targets(
        ServiceNamespace="sagemaker", ResourceIds=[resource_id(endpoint)], ScalableDimension=SCALABLE_DIMENSION
    )["ScalableTargets"]


def scaling_policies(autoscaling: Any, endpoint: str) -> list[str]:
    """Names of the scaling policies attached to the endpoint's variant."""
    keys = target_keys(endpoint)
    policies = autoscaling.describe_scaling_policies(**keys)["ScalingPolicies"]
    # Some emulators match ResourceId loosely; keep only exact matches.
    return [p["PolicyName"] for p in policies if p.get("ResourceId") == keys["ResourceId"]]


def endpoint_alarms(cloudwatch: Any, endpoint: str) -> list[str]:
    """Alarms on this endpoint's AWS/SageMaker metrics that sd-studio caused: the ones it tagged for the endpoint,
    and the TargetTracking-* alarms Application Auto Scaling made for its policies. Alarms a user made are kept."""
    names = []
    for page in cloudwatch.get_paginator("describe_alarms").paginate(AlarmTypes=["MetricAlarm"]):
        for alarm in page["MetricAlarms"]:
            dims = {d["Name"]: d["Value"] for d in alarm.get("Dimensions", [])}
            if alarm.get("Namespace") != "AWS/SageMaker" or dims.get("EndpointName") != endpoint:
                continue
            if alarm["AlarmName"].startswith(f"TargetTracking-{resource_id(endpoint)}-"):
                names.append(alarm["AlarmName"])
                continue
            found = tag_dict(cloudwatch.list_tags_for_resource(ResourceARN=alarm["AlarmArn"]).get("Tags", []))
            if found.get(TAG_KEY) == "true" and found.get(TAG_ENDPOINT) == endpoint:
                names.append(alarm["AlarmName"])
    return names


def configure_autoscaling(
    plan: DeployPlan, autoscaling: Any, cloudwatch: Any, rollback: Rollback, say: ProgressCallback
) -> None:
    """Register the variant as a scalable target and attach the policies (and alarm) for the mode."""
    keys = target_keys(plan.name)
    autoscaling.register_scalable_target(
        **keys, MinCapacity=plan.effective_min, MaxCapacity=plan.max_instances, Tags={TAG_KEY: "true"}
    )
    rollback.push(f"scalable target {keys['ResourceId']}", lambda: autoscaling.deregister_scalable_target(**keys))
    say("autoscaling", f"scalable target {keys['ResourceId']}: {plan.effective_min}-{plan.max_instances} instances")
    if plan.mode == "realtime":
        _track_invocations(plan, autoscaling, rollback, say)
    else:
        _track_backlog(plan, autoscaling, rollback, say)
        _scale_out_from_zero(plan, autoscaling, cloudwatch, rollback, say)


def _put_policy(plan: DeployPlan, autoscaling: Any, rollback: Rollback, key: str, **body: Any) -> str:
    """Attach the policy `key` of `policy_names`; returns its ARN."""
    keys = target_keys(plan.name)
    policy_name = policy_names(plan.name)[key]
    arn = autoscaling.put_scaling_policy(PolicyName=policy_name, **keys, **body)["PolicyARN"]
    rollback.push(
        f"scaling policy {policy_name}", lambda: autoscaling.delete_scaling_policy(PolicyName=policy_name, **keys)
    )
    return arn


def _track_invocations(plan: DeployPlan, autoscaling: Any, rollback: Rollback, say: ProgressCallback) -> None:
    _put_policy(
        plan,
        autoscaling,
        rollback,
        "invocations",
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": plan.target_invocations_per_instance,
            "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
            "ScaleInCooldown": 300,
            "ScaleOutCooldown": 60,
        },
    )
    say("autoscaling", f"target tracking: {plan.target_invocations_per_instance:g} invocations/instance/minute")


def _track_backlog(plan: DeployPlan, autoscaling: Any, rollback: Rollback, say: ProgressCallback) -> None:
    _put_policy(
        plan,
        autoscaling,
        rollback,
        "backlog",
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": plan.target_backlog_per_instance,
            "CustomizedMetricSpecification": {
                "MetricName": "ApproximateBacklogSizePerInstance",
                "Namespace": "AWS/SageMaker",
                "Dimensions": [{"Name": "EndpointName", "Value": plan.name}],
                "Statistic": "Average",
            },
            "ScaleInCooldown": 600,
            "ScaleOutCooldown": 120,
        },
    )
    say("autoscaling", f"target tracking: {plan.target_backlog_per_instance:g} queued requests per instance")


def _scale_out_from_zero(
    plan: DeployPlan, autoscaling: Any, cloudwatch: Any, rollback: Rollback, say: ProgressCallback
) -> None:
    """A step policy adding one instance, fired by an alarm on HasBacklogWithoutCapacity."""
    step_arn = _put_policy(
        plan,
        autoscaling,
        rollback,
        "scale-out-from-zero",
        PolicyType="StepScaling",
        StepScalingPolicyConfiguration={
            "AdjustmentType": "ChangeInCapacity",
            "MetricAggregationType": "Average",
            "Cooldown": 300,
            "StepAdjustments": [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}],
        },
    )
    alarm_name = backlog_alarm_name(plan.name)
    cloudwatch.put_metric_alarm(
        AlarmName=alarm_name,
        AlarmDescription=f"SD Studio: scale {plan.name} out from zero when requests are queued",
        MetricName="HasBacklogWithoutCapacity",
        Namespace="AWS/SageMaker",
        Dimensions=[{"Name": "EndpointName", "Value": plan.name}],
        Statistic="Average",
        Period=60,
        EvaluationPeriods=2,
        DatapointsToAlarm=2,
        Threshold=1,
        ComparisonOperator="GreaterThanOrEqualToThreshold",
        TreatMissingData="missing",
        AlarmActions=[step_arn],
        Tags=tags(plan.mode, plan.name),
    )
    rollback.push(f"alarm {alarm_name}", lambda: cloudwatch.delete_alarms(AlarmNames=[alarm_name]))
    say("autoscaling", f"step scaling from zero, fired by alarm {alarm_name} (HasBacklogWithoutCapacity >= 1)")
