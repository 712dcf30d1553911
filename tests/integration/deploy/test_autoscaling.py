"""studio.deploy.autoscaling against moto: the scalable target, the policies per mode, the scale-from-zero alarm."""

from __future__ import annotations

import pytest

from studio.deploy import DeployError, DeployPlan, create

RESOURCE_ID = "endpoint/{}/variant/AllTraffic"


def test_async_endpoint_scales_to_zero_with_a_backlog_policy_and_an_alarm(account, async_deployment):
    autoscaling = account.client("application-autoscaling")
    resource_id = RESOURCE_ID.format("sd-async")
    (target,) = autoscaling.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[resource_id])[
        "ScalableTargets"
    ]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (0, 2)
    assert target["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    policies = {
        p["PolicyType"]: p
        for p in autoscaling.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=resource_id)[
            "ScalingPolicies"
        ]
    }
    assert set(policies) == {"TargetTrackingScaling", "StepScaling"}
    metric = policies["TargetTrackingScaling"]["TargetTrackingScalingPolicyConfiguration"][
        "CustomizedMetricSpecification"
    ]
    assert metric["MetricName"] == "ApproximateBacklogSizePerInstance"
    assert metric["Dimensions"] == [{"Name": "EndpointName", "Value": "sd-async"}]
    step = policies["StepScaling"]["StepScalingPolicyConfiguration"]
    assert step["AdjustmentType"] == "ChangeInCapacity"
    assert step["StepAdjustments"][0]["ScalingAdjustment"] == 1

    cloudwatch = account.client("cloudwatch")
    (alarm,) = cloudwatch.describe_alarms()["MetricAlarms"]
    assert alarm["MetricName"] == "HasBacklogWithoutCapacity"
    assert alarm["Namespace"] == "AWS/SageMaker"
    assert alarm["Dimensions"] == [{"Name": "EndpointName", "Value": "sd-async"}]
    assert alarm["AlarmActions"] == [policies["StepScaling"]["PolicyARN"]]
    alarm_tags = cloudwatch.list_tags_for_resource(ResourceARN=alarm["AlarmArn"])["Tags"]
    assert {"Key": "sd-studio", "Value": "true"} in alarm_tags


def test_realtime_endpoint_tracks_invocations_per_instance(account, realtime_deployment):
    autoscaling = account.client("application-autoscaling")
    resource_id = RESOURCE_ID.format("sd-rt")
    (target,) = autoscaling.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[resource_id])[
        "ScalableTargets"
    ]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (2, 3)
    (policy,) = autoscaling.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=resource_id)[
        "ScalingPolicies"
    ]
    assert policy["PolicyType"] == "TargetTrackingScaling"
    spec = policy["TargetTrackingScalingPolicyConfiguration"]["PredefinedMetricSpecification"]
    assert spec["PredefinedMetricType"] == "SageMakerVariantInvocationsPerInstance"
    assert account.client("cloudwatch").describe_alarms()["MetricAlarms"] == []  # no scale-from-zero alarm


def test_rollback_when_autoscaling_fails(account, allow_g5, monkeypatch):
    from moto.cloudwatch.models import CloudWatchBackend

    def fail(self, *args, **kwargs):
        raise RuntimeError("injected alarm failure")

    monkeypatch.setattr(CloudWatchBackend, "put_metric_alarm", fail)
    plan = DeployPlan(verify=False, name="sd-as", model="s3://b-1/m.tar.gz", mode="async", role=account.ROLE)
    with pytest.raises(DeployError) as caught:
        create(plan, poll_seconds=0.01)
    assert caught.value.step == "autoscaling"
    account.assert_nothing_left()  # policies and scalable target too, not only the SageMaker resources
