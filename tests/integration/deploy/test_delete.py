"""studio.deploy.delete against moto: everything created goes, in order, verified; only what we tagged."""

from __future__ import annotations

import pytest

from studio.deploy import DeployError, DeployPlan, create, delete


def test_delete_removes_everything_in_order_and_is_idempotent(account, async_deployment, progress):
    report = delete("sd-async", delete_artifacts=True, progress=progress, poll_seconds=0.01)
    assert report.ok, report.summary()
    kinds = [d.split(" ")[0] for d in report.deleted]
    # In order: autoscaling first, then endpoint, config, model, artifacts.
    assert kinds == ["scalable", "scaling", "scaling", "alarm(s)", "endpoint", "endpoint", "model", "1"]
    assert "verified: nothing is left" in report.summary()
    assert ("delete", "verified: nothing is left") in progress.events
    account.assert_nothing_left()
    s3 = account.client("s3")
    assert s3.list_objects_v2(Bucket=account.BUCKET, Prefix="sd-studio/sd-async/").get("KeyCount", 0) == 0

    # Idempotent: a second delete finds nothing and still succeeds.
    again = delete("sd-async", delete_artifacts=True)
    assert again.ok and again.deleted == []
    assert "nothing to delete" in again.summary()


def test_delete_realtime_endpoint(account, realtime_deployment):
    report = delete("sd-rt", poll_seconds=0.01)
    assert report.ok, report.summary()
    account.assert_nothing_left()


def test_an_endpoint_the_studio_did_not_deploy_is_never_deleted(account, foreign_endpoint):
    plan = DeployPlan(
        verify=False,
        name="sd-s3",
        model="s3://my-models/sd/model.tar.gz",
        instance_type="ml.g4dn.xlarge",
        role=account.ROLE,
    )
    create(plan, poll_seconds=0.01)
    sm = account.client("sagemaker")
    with pytest.raises(DeployError, match="not deployed by SD Studio"):
        delete("other")
    assert sm.describe_endpoint(EndpointName="other")["EndpointStatus"] == "InService"
    assert delete("sd-s3", poll_seconds=0.01).ok
    assert [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]] == ["other"]


def test_longest_name_and_user_alarms_are_handled(account):
    """A 63-character name still fits model/config names; delete finds them and keeps a user's own alarm."""
    name = "n" * 63
    plan = DeployPlan(
        verify=False, name=name, model="s3://b-1/m.tar.gz", instance_type="ml.g4dn.xlarge", role=account.ROLE
    )
    result = create(plan, poll_seconds=0.01)
    cloudwatch = account.client("cloudwatch")
    cloudwatch.put_metric_alarm(
        AlarmName="my-latency-alarm",
        MetricName="ModelLatency",
        Namespace="AWS/SageMaker",
        Dimensions=[{"Name": "EndpointName", "Value": name}],
        Statistic="Average",
        Period=60,
        EvaluationPeriods=1,
        Threshold=1e6,
        ComparisonOperator="GreaterThanThreshold",
    )
    report = delete(name, poll_seconds=0.01)
    assert report.ok, report.summary()
    assert f"model {result.model_name}" in report.deleted
    assert [a["AlarmName"] for a in cloudwatch.describe_alarms()["MetricAlarms"]] == ["my-latency-alarm"]
    cloudwatch.delete_alarms(AlarmNames=["my-latency-alarm"])
    account.assert_nothing_left()


def test_async_with_s3_model_deletes_cleanly(account, allow_g5):
    plan = DeployPlan(
        verify=False, name="sd-s3-async", model="s3://my-models/m.tar.gz", mode="async", role=account.ROLE
    )
    create(plan, poll_seconds=0.01)
    assert delete("sd-s3-async", poll_seconds=0.01).ok
    account.assert_nothing_left()


def test_a_bad_name_is_refused_before_any_call(account):
    with pytest.raises(DeployError) as caught:
        delete("x_y")
    assert caught.value.step == "validate" and "not a valid SageMaker endpoint name" in str(caught.value)
