"""The verified deploy against moto and the SageMaker runtime stand-in: `create` reports ready only once a tiny
request came back with an image; a failure shows the container's CloudWatch log lines, rolls back (unless
keep_on_failure) and the CLI exits non-zero; --skip-verify warns."""

from __future__ import annotations

import pytest

from studio.deploy import DeployError, DeployPlan, create
from studio.deploy.__main__ import main
from studio.engine import EngineError
from studio.testing.fakes import FakeEngine

ROLE = "arn:aws:iam::123456789012:role/SageMakerExecution"


def plan(name: str, **changes) -> DeployPlan:
    options = {"model": "s3://b-1/m.tar.gz", "instance_type": "ml.g4dn.xlarge", "role": ROLE, **changes}
    return DeployPlan(name=name, **options)


def test_realtime_endpoint_is_ready_only_after_the_smoke_image(account, runtime, progress):
    engine = FakeEngine(loaded=True)
    runtime.serve("sd-ok", engine)
    result = create(plan("sd-ok"), progress, poll_seconds=0.01)
    assert result.verified
    (request,) = engine.requests
    assert (request.width, request.height, request.steps, request.count) == (64, 64, 2, 1)
    assert any("answered with a 64x64 image" in m for m in progress.messages("verify"))
    assert progress.steps()[-2:] == ["verify", "done"]
    assert "generated the smoke-test image" in progress.messages("done")[0]


def test_async_endpoint_is_verified_through_s3(account, runtime, progress):
    engine = FakeEngine(loaded=True)
    runtime.serve("sd-async-ok", engine, mode="async")
    result = create(plan("sd-async-ok", mode="async"), progress, poll_seconds=0.01)
    assert result.verified and len(engine.requests) == 1
    keys = [o["Key"] for o in account.client("s3").list_objects_v2(Bucket=account.BUCKET)["Contents"]]
    assert any(k.startswith("sd-studio/sd-async-ok/async-output/") and k.endswith(".out") for k in keys)


def test_a_failing_endpoint_shows_its_logs_and_is_rolled_back(account, runtime, progress):
    runtime.serve("sd-bad", FakeEngine(loaded=True, fail_with=EngineError("CUDA error: out of memory")))
    runtime.log("sd-bad", "torch loaded", "RuntimeError: CUDA error: out of memory")
    with pytest.raises(DeployError) as caught:
        create(plan("sd-bad"), progress, poll_seconds=0.01)
    message = str(caught.value)
    assert message.startswith("verify: the smoke request failed: ") and "CUDA error: out of memory" in message
    assert "last container log lines (/aws/sagemaker/Endpoints/sd-bad)" in message
    assert "AllTraffic/i-0123456789: RuntimeError: CUDA error: out of memory" in message
    assert any(m.startswith("removed endpoint sd-bad") for m in progress.messages("rollback"))
    account.assert_nothing_left()


def test_a_model_that_cannot_load_fails_fast_from_its_log_line(account, runtime, progress):
    """The container answers "not loaded yet" (a cold endpoint looks the same), but its log has the toolkit's
    load-failure line: create stops waiting at once instead of after the verify timeout."""
    runtime.serve("sd-broken", FakeEngine(loaded=False))
    runtime.log("sd-broken", "SD-STUDIO-MODEL-LOAD-FAILED: the model could not be loaded: ModelLoadError: no model")
    with pytest.raises(DeployError, match="^verify: the container could not load the model: .*ModelLoadError"):
        create(plan("sd-broken", verify_timeout_seconds=600), progress, poll_seconds=0.01)
    account.assert_nothing_left()


def test_an_endpoint_that_never_answers_times_out_and_keep_on_failure_keeps_it(account, runtime, progress):
    runtime.serve("sd-slow", FakeEngine(loaded=False))
    with pytest.raises(DeployError, match="^verify: no image after 1 s") as caught:
        create(plan("sd-slow", verify_timeout_seconds=1, keep_on_failure=True), progress, poll_seconds=0.01)
    assert "(no container logs yet: the log group /aws/sagemaker/Endpoints/sd-slow does not exist)" in str(caught.value)
    assert "kept for inspection (--keep-on-failure)" in str(caught.value)
    sm = account.client("sagemaker")
    assert sm.describe_endpoint(EndpointName="sd-slow")["EndpointStatus"] == "InService"  # left for inspection
    assert main(["delete", "--name", "sd-slow", "--yes", "--poll-seconds", "0.01"]) == 0
    account.assert_nothing_left()


def test_cli_create_verifies_and_exits_non_zero_on_failure(account, runtime, capsys):
    runtime.serve("sd-cli-ok", FakeEngine(loaded=True))
    common = ["--model", "s3://b-1/m.tar.gz", "--instance-type", "ml.g4dn.xlarge", "--role", ROLE, "--yes"]
    assert main(["create", "--name", "sd-cli-ok", *common, "--poll-seconds", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "[verify] sd-cli-ok answered with a 64x64 image" in out
    assert "Endpoint sd-cli-ok is ready: it generated the smoke-test image." in out

    runtime.serve("sd-cli-bad", FakeEngine(loaded=True, fail_with=EngineError("NaN in the VAE")))
    runtime.log("sd-cli-bad", "ValueError: NaN in the VAE")
    assert main(["create", "--name", "sd-cli-bad", *common, "--poll-seconds", "0.01"]) == 1
    out = capsys.readouterr().out
    assert "error: verify: the smoke request failed" in out and "ValueError: NaN in the VAE" in out
    assert "[rollback] removed endpoint sd-cli-bad" in out
