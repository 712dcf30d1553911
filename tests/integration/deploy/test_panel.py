"""The Settings tab's Deploy panel against moto: its handlers (what its buttons run; they are not in the public
API, so gradio_client cannot call them) and the app's endpoint switch; and what the UI imports at start."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import gradio as gr
import pytest

from studio.testing.servers import REPO
from studio.ui import deploy_panel as panel

PLAN = dict(
    name="sd-ui",
    model="s3://b-1/m.tar.gz",
    instance_type="ml.g4dn.xlarge",
    mode="realtime",
    min_instances=None,
    max_instances=2,
    bucket="",
    prefix="sd-studio",
    image="",
    region="",
    skip_verify=True,  # moto's invoke answers are canned; the smoke test is tested with the runtime stand-in
)


def test_panel_deploy_use_and_delete(account):
    """The panel's handlers (what its buttons run), as a user presses them: price, deploy, list, use, delete."""
    used: list[str] = []

    def use(name: str) -> str:
        if name == "explode":
            raise ValueError("cannot use that one")
        used.append(name)
        return f"Now using endpoint {name}"

    args = {**PLAN, "role": account.ROLE}
    price = panel.show_price("ml.g5.2xlarge", "async", None, 3)
    assert price.startswith("ml.g5.2xlarge: $1.515 per instance-hour")
    assert "$0.00/h when idle (scales to zero), up to $4.54/h at 3 instance(s)" in price

    with pytest.raises(gr.Error, match="I accept the hourly cost"):
        list(panel.create_endpoint(**args, accepted=False))
    with pytest.raises(gr.Error, match="name: 'bad_name' is not a valid"):
        list(panel.create_endpoint(**{**args, "name": "bad_name"}, accepted=True))
    account.assert_nothing_left()

    updates = list(panel.create_endpoint(**args, accepted=True))  # streamed log snapshots
    log_text = updates[-1]
    assert len(updates) >= 5  # step by step, not one final blob
    assert "[endpoint-config] created endpoint config sd-ui-" in log_text
    assert "[autoscaling] target tracking: 10 invocations/instance/minute" in log_text
    assert "Endpoint sd-ui is InService but NOT verified" in log_text
    assert "WARNING: the smoke test is skipped" in log_text

    rows, selected = panel.list_rows("", None)
    assert rows == [["sd-ui", "InService", "realtime", "ml.g4dn.xlarge", "1", "0m", "$0.74"]]
    assert selected["choices"] == ["sd-ui"] and selected["value"] == "sd-ui"
    assert "**sd-ui**: InService · realtime · ml.g4dn.xlarge × 1" in panel.show_details("sd-ui", "")

    assert panel.use_selected(use, "sd-ui") == "Now using endpoint sd-ui"
    assert used == ["sd-ui"]
    with pytest.raises(gr.Error, match="cannot use that one"):
        panel.use_selected(use, "explode")

    with pytest.raises(gr.Error, match="Yes, delete this endpoint"):
        list(panel.delete_endpoint("sd-ui", False, False, ""))
    assert account.client("sagemaker").list_endpoints()["Endpoints"]  # still there
    log_text = list(panel.delete_endpoint("sd-ui", True, False, ""))[-1]
    assert "verified: nothing is left" in log_text
    account.assert_nothing_left()
    rows, selected = panel.list_rows("", "sd-ui")
    assert rows == [] and selected["value"] is None
    assert "no such endpoint" in panel.show_details("sd-ui", "")


def test_panel_shows_deploy_failures(account, monkeypatch):
    from moto.sagemaker.exceptions import ValidationError
    from moto.sagemaker.models import SageMakerModelBackend

    def fail(self, *args, **kwargs):
        raise ValidationError(message="injected: quota exceeded for ml.g4dn.xlarge")

    monkeypatch.setattr(SageMakerModelBackend, "create_endpoint", fail)
    updates = []
    with pytest.raises(gr.Error, match="endpoint: ValidationException: injected: quota exceeded"):
        for update in panel.create_endpoint(
            **{**PLAN, "name": "sd-ui-fail", "max_instances": 1}, role=account.ROLE, accepted=True
        ):
            updates.append(update)
    assert "ERROR: endpoint: ValidationException: injected: quota exceeded" in updates[-1]  # shown in the log too
    account.assert_nothing_left()


def test_settings_tab_deploy_use_delete_in_the_real_app(account, runtime, tmp_path, monkeypatch):
    """As a new user of the studio's own Settings tab: deploy the demo model (verified through the runtime
    stand-in: async, through S3), switch to it, then delete it."""
    import app
    from studio.config import load_settings
    from studio.testing.fakes import FakeEngine
    from studio.ui.settings import use_endpoint

    smoke = FakeEngine(loaded=True)
    runtime.serve("sd-e2e", smoke, mode="async")

    for key in [k for k in os.environ if k.startswith("STUDIO_")]:
        monkeypatch.delenv(key)
    # http backend at a closed port: the studio starts without loading a model; the switch goes to SageMaker.
    settings = load_settings(["--backend", "http", "--url", "http://127.0.0.1:9", "--outputs", str(tmp_path / "out")])
    blocks, controller = app.create_studio(settings)
    try:
        log_text = list(
            panel.create_endpoint(
                **{**PLAN, "name": "sd-e2e", "model": "demo", "mode": "async", "max_instances": 1}
                | {"skip_verify": False},
                role=account.ROLE,
                accepted=True,
            )
        )[-1]
        assert "[upload] uploaded" in log_text and "Endpoint sd-e2e is ready: it generated the smoke" in log_text
        assert [(r.width, r.steps) for r in smoke.requests] == [(64, 2)]
        assert controller.list_endpoints() == ["sd-e2e"]  # the Settings tab's "List InService endpoints"
        message = use_endpoint(controller, "sd-e2e")
        assert "sd-e2e" in message
        status = controller.status()
        assert (status.backend, status.model) == ("sagemaker", "sd-e2e")
        log_text = list(panel.delete_endpoint("sd-e2e", True, True, ""))[-1]
        assert "verified: nothing is left" in log_text
        account.assert_nothing_left()
    finally:
        blocks.close()


def test_importing_deploy_does_not_import_boto3():
    code = "import sys, studio.deploy; print(sorted(m for m in ('boto3', 'botocore', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_panel_imports_neither_boto3_nor_deploy_at_module_level():
    """Checked on the source (importing gradio in a subprocess costs ~10 s): top-level imports only."""
    tree = ast.parse((REPO / "studio" / "ui" / "deploy_panel.py").read_text())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            top.add(node.module or "")
    assert not {m for m in top if m.split(".")[0] in ("boto3", "botocore", "torch", "diffusers")}
    assert "studio.deploy" not in top and "studio" not in top


def test_panel_builds_the_image_and_deploys_a_lambda_function(account):
    """The Deploy panel's build-image button (CodeBuild in moto) fills the container image; the Lambda target deploys
    a function (moto creates image functions without Docker), lists it beside the endpoints and deletes it."""
    with pytest.raises(gr.Error, match="repo: 'Bad Repo' is not an ECR repository name"):
        list(panel.build_image("Bad Repo", "", ""))
    updates = list(panel.build_image("sd-studio-serve", "", ""))
    log_text, image = updates[-1]
    assert "[build] started CodeBuild build" in log_text and "[done] pushed" in log_text
    assert image["value"].startswith("123456789012.dkr.ecr.us-east-1.amazonaws.com/sd-studio-serve:")

    assert panel.show_target("AWS Lambda function")[1]["visible"] is True
    assert panel.show_lambda_price(3008).startswith("Lambda 3008 MB")
    lambda_image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sd-lambda:1"
    args = ["sd-fn", lambda_image, "demo", 3008, 300, False, "us-east-1"]
    with pytest.raises(gr.Error, match="I accept the cost"):
        list(panel.create_lambda(*args, False))
    log_text = list(panel.create_lambda(*args, True))[-1]
    assert "Function sd-fn is ready: https://" in log_text

    rows, selected = panel.list_rows("", None)
    assert [row[0] for row in rows] == ["sd-fn"] and selected["value"] == "sd-fn"
    log_text = list(panel.delete_endpoint("sd-fn", True, False, ""))[-1]
    assert "verified: nothing is left" in log_text
    assert panel.list_rows("", None)[0] == []
