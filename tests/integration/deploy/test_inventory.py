"""studio.deploy.inventory against moto: the one listing (ours, or every InService endpoint), status, and the
start-up warning about endpoints that cost money."""

from __future__ import annotations

import pytest

from studio.deploy import (
    INSTANCE_PRICES,
    TABLE_HEADERS,
    DeployError,
    DeployPlan,
    PlanError,
    create,
    list_endpoints,
    running_endpoints_warning,
    status,
)


def test_list_and_status_show_an_async_endpoint(async_deployment):
    (info,) = list_endpoints()
    assert (info.name, info.status, info.mode, info.instance_type, info.instance_count) == (
        "sd-async",
        "InService",
        "async",
        "ml.g5.xlarge",
        1,
    )
    assert info.price_per_hour == INSTANCE_PRICES["ml.g5.xlarge"]
    assert info.estimated_cost_per_hour == pytest.approx(1.408)
    assert info.age == "0m"
    assert info.row()[-1] == "$1.41"
    assert len(info.row()) == len(TABLE_HEADERS)
    described = status("sd-async")
    assert (described.min_instances, described.max_instances) == (0, 2)
    assert described.async_output_path == async_deployment.async_output_path
    assert described.model_names == [async_deployment.model_name]


def test_list_shows_a_realtime_endpoint_with_its_cost(realtime_deployment):
    (info,) = list_endpoints()
    assert (info.mode, info.instance_type, info.instance_count) == ("realtime", "ml.g4dn.xlarge", 2)
    assert info.estimated_cost_per_hour == pytest.approx(2 * 0.736)


def test_list_ignores_endpoints_the_studio_did_not_deploy(account, foreign_endpoint):
    plan = DeployPlan(
        verify=False,
        name="sd-s3",
        model="s3://my-models/sd/model.tar.gz",
        instance_type="ml.g4dn.xlarge",
        role=account.ROLE,
    )
    create(plan, poll_seconds=0.01)
    assert [e.name for e in list_endpoints()] == ["sd-s3"]


def test_all_in_service_lists_every_usable_endpoint_whoever_deployed_it(account, foreign_endpoint, monkeypatch):
    """The Settings tab's "List InService SageMaker endpoints" reads the same listing as the Deploy panel."""
    plan = DeployPlan(
        verify=False,
        name="sd-s3",
        model="s3://my-models/sd/model.tar.gz",
        instance_type="ml.g4dn.xlarge",
        role=account.ROLE,
    )
    create(plan, poll_seconds=0.01)
    listed = list_endpoints(all_in_service=True)
    assert [e.name for e in listed] == ["sd-s3", "other"]  # newest first
    other = listed[1]
    assert (other.status, other.mode, other.instance_type, other.instance_count) == (
        "InService",
        "realtime",
        "ml.g4dn.xlarge",
        1,
    )

    from moto.sagemaker.models import FakeEndpoint

    original = FakeEndpoint.__init__

    def failing_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.endpoint_status = "Failed"

    monkeypatch.setattr(FakeEndpoint, "__init__", failing_init)
    sm = account.client("sagemaker")
    sm.create_endpoint(EndpointName="broken", EndpointConfigName="other")
    assert [e.name for e in list_endpoints(all_in_service=True)] == ["sd-s3", "other"]  # only InService ones


def test_listing_failures_are_one_clear_line(account, monkeypatch):
    """No credentials: DeployError("list") saying so (the Settings tab shows it), never a botocore traceback."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(DeployError) as caught:
        list_endpoints(all_in_service=True)
    assert caught.value.step == "list"
    assert "no AWS credentials found" in str(caught.value)


def test_missing_region_is_a_plan_error(account, monkeypatch):
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(PlanError, match="region"):
        list_endpoints()


def test_running_endpoints_warning(account):
    assert running_endpoints_warning() is None
    plan = DeployPlan(
        verify=False, name="sd-warn", model="s3://b-1/m.tar.gz", instance_type="ml.g4dn.xlarge", role=account.ROLE
    )
    create(plan, poll_seconds=0.01)
    warning = running_endpoints_warning()
    assert warning is not None
    assert "sd-warn (InService, ml.g4dn.xlarge x1, realtime)" in warning
    assert "$0.74/h" in warning


def test_running_endpoints_warning_is_quiet_without_a_region(monkeypatch):
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    assert running_endpoints_warning() is None


def test_running_endpoints_warning_is_quiet_without_credentials(account, monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookup (would time out)
    assert running_endpoints_warning() is None  # the start-up check stays quiet, never raises
