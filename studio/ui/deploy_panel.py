"""The Deploy section of the Settings tab: create, list, inspect, use and delete SageMaker endpoints.

None of these actions is part of the public API (api_visibility="private"): deploying costs money, and the
`python -m studio.deploy` CLI is the scripting interface. Each function imports studio.deploy when it runs, so
importing the UI imports neither it nor boto3 (which studio.deploy imports only when a handler calls AWS).
Long operations (create, delete) run in a worker thread and the handler is a generator that streams their
step-by-step progress into a log box. Errors are shown in the log and raised as gr.Error with the message;
nothing is swallowed.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from studio.ui.controller import bind

log = logging.getLogger(__name__)

INTRO = (
    "Deploys the studio's engine to an Amazon SageMaker endpoint **in your AWS account, at your cost**, using your "
    "standard AWS credentials (environment, `~/.aws`, SSO or an instance role). Real-time endpoints bill per "
    "instance-hour while they exist; async endpoints scale to zero when idle. Everything created is tagged "
    "`sd-studio` and listed below, so it can be deleted here."
)

UseEndpoint = Callable[[str], str]  # switches the studio to an endpoint; returns a message to show


def _text(value: str | None) -> str | None:
    """Blank textbox → None (use the default)."""
    value = (value or "").strip()
    return value or None


def _int_or_none(value: Any) -> int | None:
    """gr.Number gives int/float/None; keep None, make integral floats ints, let validate() reject the rest."""
    if value is None or value == "":
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _run_streaming(
    work: Callable[[Callable[[str, str], None]], Any],
) -> Iterator[tuple[str, Any, BaseException | None]]:
    """Run work(progress) in a thread; yield ("line", text, None) per progress message, then ("done", result, exc)."""
    events: queue.Queue[tuple[str, Any, BaseException | None]] = queue.Queue()

    def progress(step: str, message: str) -> None:
        events.put(("line", f"[{step}] {message}", None))

    def target() -> None:
        try:
            events.put(("done", work(progress), None))
        except BaseException as exc:  # noqa: BLE001 - handed to the UI thread, which shows and raises it
            events.put(("done", None, exc))

    threading.Thread(target=target, name="sd-studio-deploy", daemon=True).start()
    while True:
        try:
            event = events.get(timeout=30)
        except queue.Empty:
            continue
        yield event
        if event[0] == "done":
            return


def show_price(instance_type: str, mode: str, min_instances: Any, max_instances: Any) -> str:
    """The hourly cost of the chosen instance type, mode and instance range."""
    from studio import deploy

    try:
        return deploy.describe_price(instance_type, mode, _int_or_none(min_instances), int(max_instances or 1))
    except (TypeError, ValueError):
        return deploy.describe_price(instance_type, mode)


def create_endpoint(
    name: str,
    model: str,
    instance_type: str,
    mode: str,
    min_instances: Any,
    max_instances: Any,
    bucket: str,
    prefix: str,
    role: str,
    image: str,
    region: str,
    accepted: bool,
    skip_verify: bool = False,
    network_isolation: bool = False,
    vendor_wheels: bool = False,
) -> Iterator[str]:
    """Deploy: validate the plan at once, then stream the log of deploy.create step by step (the last step is the
    smoke test: the endpoint is reported ready only once it generated an image)."""
    from studio import deploy

    plan = deploy.DeployPlan(
        name=(name or "").strip(),
        model=(model or "").strip(),
        instance_type=instance_type,
        mode=mode,
        min_instances=_int_or_none(min_instances),
        max_instances=_int_or_none(max_instances) if max_instances is not None else 1,
        bucket=_text(bucket),
        prefix=(prefix or "").strip(),
        role=_text(role),
        image=_text(image),
        region=_text(region),
        verify=not skip_verify,
        network_isolation=bool(network_isolation),
        vendor_wheels=bool(vendor_wheels),
    )
    try:
        plan.validate(check_aws=False)  # instant feedback on names/sizes before any AWS call
    except deploy.DeployError as err:
        raise gr.Error(str(err), title="Not deployed") from None
    if not accepted:
        raise gr.Error("Tick “I accept the hourly cost shown above” to deploy.", title="Not deployed")
    lines = [deploy.describe_price(plan.instance_type, plan.mode, plan.min_instances, plan.max_instances)]
    if skip_verify:
        lines.append("WARNING: the smoke test is skipped: the endpoint will not be asked for an image.")
    yield "\n".join(lines)
    for kind, value, exc in _run_streaming(lambda progress: deploy.create(plan, progress)):
        if exc is not None:
            log.warning("deploy of %s failed: %s", plan.name, exc)
            lines.append(f"ERROR: {exc}")
            yield "\n".join(lines)
            raise gr.Error(str(exc), title="Deploy failed") from None
        if kind == "line":
            lines.append(value)
        elif value.verified:
            lines.append(
                f"Endpoint {value.endpoint_name} is ready: it generated the smoke-test image. "
                "Select it below and press “Use this endpoint”."
            )
        else:
            lines.append(f"Endpoint {value.endpoint_name} is InService but NOT verified (the smoke test was skipped).")
        yield "\n".join(lines)


def build_image(repo: str, region: str, current_image: str) -> Iterator[tuple[str, Any]]:
    """Build the project's own serving image on CodeBuild (no local Docker), streaming its log; on success the image
    URI goes into the "Container image" box, so Deploy uses it."""
    from studio import deploy
    from studio.deploy.build_image import build_image as run_build
    from studio.deploy.build_image import check_repo_name

    repo = (repo or "").strip()
    try:
        check_repo_name(repo)
    except deploy.DeployError as err:
        raise gr.Error(str(err), title="Not built") from None
    lines = [f"Building the project's Dockerfile into ECR repository {repo} with AWS CodeBuild…"]
    yield "\n".join(lines), gr.update(value=current_image)
    for kind, value, exc in _run_streaming(lambda progress: run_build(repo, progress, region=_text(region))):
        if exc is not None:
            lines.append(f"ERROR: {exc}")
            yield "\n".join(lines), gr.update(value=current_image)
            raise gr.Error(str(exc), title="Build failed") from None
        if kind == "line":
            lines.append(value)
            yield "\n".join(lines), gr.update(value=current_image)
        else:
            lines.append(f"Image {value.image_uri} is in ECR; it is now the container image for Deploy.")
            yield "\n".join(lines), gr.update(value=value.image_uri)


TARGETS = ("SageMaker endpoint", "AWS Lambda function")


def show_target(target: str) -> tuple[Any, Any]:
    """Show the SageMaker or the Lambda form."""
    lambda_target = target == TARGETS[1]
    return gr.update(visible=not lambda_target), gr.update(visible=lambda_target)


def show_lambda_price(memory: Any) -> str:
    from studio.deploy.lambda_pricing import describe_lambda_price

    try:
        return describe_lambda_price(int(memory or 10240))
    except (TypeError, ValueError):
        return describe_lambda_price(10240)


def create_lambda(
    name: str, image_uri: str, model: str, memory: Any, timeout: Any, public_url: bool, region: str, accepted: bool
) -> Iterator[str]:
    """Deploy to AWS Lambda (studio.deploy.lambda_.create_function), streaming its steps."""
    from studio import deploy
    from studio.deploy.lambda_ import LambdaPlan, create_function

    plan = LambdaPlan(
        name=(name or "").strip(),
        image_uri=(image_uri or "").strip(),
        memory=_int_or_none(memory) or 10240,
        timeout=_int_or_none(timeout) or 900,
        public_url=bool(public_url),
        model=_text(model),
        region=_text(region),
    )
    try:
        plan.validate(check_aws=False)
    except deploy.DeployError as err:
        raise gr.Error(str(err), title="Not deployed") from None
    if not accepted:
        raise gr.Error("Tick “I accept the cost shown above” to deploy.", title="Not deployed")
    lines = [show_lambda_price(plan.memory)]
    if plan.public_url:
        lines.append("WARNING: a public function URL: anyone with the URL can generate at your expense.")
    yield "\n".join(lines)
    for kind, value, exc in _run_streaming(lambda progress: create_function(plan, progress)):
        if exc is not None:
            lines.append(f"ERROR: {exc}")
            yield "\n".join(lines)
            raise gr.Error(str(exc), title="Deploy failed") from None
        lines.append(value if kind == "line" else f"Function {value.function_name} is ready: {value.function_url}")
        yield "\n".join(lines)


def list_rows(region: str, current: str | None) -> tuple[Any, Any]:
    """The table of SD Studio endpoints and Lambda functions, and the choice (keeping `current` when it exists)."""
    from studio.deploy.inventory import list_targets

    try:
        endpoints = list_targets(_text(region))
    except Exception as err:  # shown to the user, not swallowed
        raise gr.Error(f"Could not list endpoints: {err}", title="List failed") from None
    names = [e.name for e in endpoints]
    value = current if current in names else (names[0] if names else None)
    return [e.row() for e in endpoints], gr.update(choices=names, value=value)


def show_details(endpoint: str | None, region: str) -> str:
    """One endpoint's state, size, autoscaling range and failure reason (errors shown in place)."""
    from studio import deploy

    if not endpoint:
        return ""
    try:
        info = deploy.status(endpoint, _text(region))
    except deploy.EndpointNotFound:
        return f"`{endpoint}`: no such endpoint (deleted?)"
    except Exception as err:  # noqa: BLE001 - shown in place of the details
        return f"Could not read `{endpoint}`: {err}"
    parts = [
        f"**{info.name}**: {info.status} · {info.mode} · {info.instance_type} × {info.instance_count}",
        f"autoscaling {info.min_instances}–{info.max_instances} · age {info.age}",
    ]
    if info.async_output_path:
        parts.append(f"async output `{info.async_output_path}`")
    if info.failure_reason:
        parts.append(f"**FailureReason:** {info.failure_reason}")
    return "  \n".join(parts)


def delete_endpoint(endpoint: str | None, confirmed: bool, artifacts: bool, region: str) -> Iterator[str]:
    """Delete the endpoint (and, if asked, its uploaded model files), streaming the log of deploy.delete."""
    from studio import deploy

    if not endpoint:
        raise gr.Error("Select an endpoint to delete.", title="Nothing deleted")
    if not confirmed:
        raise gr.Error("Tick “Yes, delete this endpoint” first.", title="Nothing deleted")
    lines = [f"Deleting {endpoint}…"]
    yield "\n".join(lines)
    work = lambda progress: deploy.delete(endpoint, artifacts, _text(region), progress)  # noqa: E731
    if _is_lambda_function(endpoint, region):
        from studio.deploy.lambda_inventory import delete_function

        work = lambda progress: delete_function(endpoint, _text(region), progress)  # noqa: E731
    report = None
    for kind, value, exc in _run_streaming(work):
        if exc is not None:
            lines.append(f"ERROR: {exc}")
            yield "\n".join(lines)
            raise gr.Error(str(exc), title="Delete failed") from None
        if kind == "line":
            lines.append(value)
        else:
            report = value
            lines.append(report.summary())
        yield "\n".join(lines)
    if report is not None and not report.ok:
        raise gr.Error(f"Some resources are left: {', '.join(report.leftovers + report.errors)}")


def _is_lambda_function(name: str, region: str) -> bool:
    """True when `name` is one of SD Studio's Lambda functions (and no SageMaker endpoint has that name)."""
    from studio.deploy.inventory import list_targets

    try:
        kinds = {getattr(t, "mode", "") for t in list_targets(_text(region)) if t.name == name}
    except Exception:  # noqa: BLE001 - then delete as an endpoint, which reports its own error
        return False
    return kinds == {"lambda"}


def use_selected(on_use_endpoint: UseEndpoint | None, endpoint: str | None) -> str:
    """Switch the studio to the selected endpoint."""
    if on_use_endpoint is None:
        raise gr.Error("Switching endpoints is not available here.")
    if not endpoint:
        raise gr.Error("Select an endpoint first.")
    try:
        return on_use_endpoint(endpoint)
    except Exception as err:  # the switch failed: say why
        raise gr.Error(str(err), title="Endpoint not used") from None


def unticked() -> Any:
    return gr.update(value=False)


def build_deploy_panel(on_use_endpoint: UseEndpoint | None) -> None:
    """Add the Deploy UI to the current gr.Blocks/gr.Tab context (None: no "Use this endpoint" button)."""
    from studio import deploy

    gr.Markdown(INTRO)
    target = gr.Radio(list(TARGETS), value=TARGETS[0], label="Deploy to", elem_id="deploy-target")
    with gr.Row():
        name = gr.Textbox(label="Endpoint name", placeholder="sd-studio-1", elem_id="deploy-name", scale=2)
        model = gr.Textbox(
            label="Model: local folder/file, s3://…/model.tar.gz, hub id (org/name) or demo",
            value="demo",
            elem_id="deploy-model",
            scale=3,
        )
    with gr.Column() as sagemaker_box:
        with gr.Row():
            instance_type = gr.Dropdown(
                choices=list(deploy.INSTANCE_PRICES),
                value=deploy.DEFAULT_INSTANCE_TYPE,
                label="Instance type (GPU)",
                elem_id="deploy-instance-type",
            )
            mode = gr.Radio(list(deploy.MODES), value="realtime", label="Mode", elem_id="deploy-mode")
            min_instances = gr.Number(value=None, precision=0, label="Min instances (blank: 1 real-time, 0 async)")
            max_instances = gr.Number(value=1, precision=0, label="Max instances")
        price = gr.Markdown(deploy.describe_price(deploy.DEFAULT_INSTANCE_TYPE), elem_id="deploy-price")
        with gr.Accordion("Advanced (S3, role, image, region)", open=False):
            with gr.Row():
                bucket = gr.Textbox(label="S3 bucket", placeholder="default: sagemaker-{region}-{account}")
                prefix = gr.Textbox(label="S3 prefix", value=deploy.DEFAULT_PREFIX)
                region = gr.Textbox(label="Region", placeholder="default: AWS_REGION / your profile's region")
            with gr.Row():
                role = gr.Textbox(
                    label="Execution role ARN", placeholder="discovered on a SageMaker notebook; otherwise required"
                )
                image = gr.Textbox(
                    label="Container image",
                    placeholder="default: the AWS PyTorch inference DLC; or the project's own (Build image below)",
                    elem_id="deploy-image",
                )
            with gr.Row():
                skip_verify = gr.Checkbox(
                    label="Skip the smoke test (emulators only: the endpoint is not asked for an image)", value=False
                )
                network_isolation = gr.Checkbox(label="Network isolation (no internet in the container)", value=False)
                vendor_wheels = gr.Checkbox(label="Vendor the wheels (the endpoint starts with no index)", value=False)
            with gr.Row():
                repo = gr.Textbox(label="ECR repository for the project's own image", value="sd-studio-serve", scale=2)
                build_button = gr.Button("Build image with AWS CodeBuild", elem_id="deploy-build-image")
        accept = gr.Checkbox(label="I accept the hourly cost shown above", value=False, elem_id="deploy-accept")
        deploy_button = gr.Button("Deploy", variant="primary", elem_id="deploy-create")
    with gr.Column(visible=False) as lambda_box:
        gr.Markdown(
            "CPU with OpenVINO on AWS Lambda: billed per image, nothing while idle. Build and push "
            "`Dockerfile.lambda` to ECR first (see the README's “Serverless CPU (Lambda)”)."
        )
        with gr.Row():
            lambda_image = gr.Textbox(label="Lambda image URI (ECR)", elem_id="deploy-lambda-image", scale=3)
            lambda_memory = gr.Number(value=10240, precision=0, label="Memory (MB, 128-10240)")
            lambda_timeout = gr.Number(value=900, precision=0, label="Timeout (s, 1-900)")
        public_url = gr.Checkbox(label="Public function URL (no AWS auth: anyone with the URL can generate)")
        lambda_price = gr.Markdown(show_lambda_price(10240), elem_id="deploy-lambda-price")
        lambda_accept = gr.Checkbox(label="I accept the cost shown above", value=False, elem_id="deploy-lambda-accept")
        lambda_button = gr.Button("Deploy to Lambda", variant="primary", elem_id="deploy-lambda-create")
    log_box = gr.Textbox(label="Deploy log", lines=12, max_lines=30, interactive=False, elem_id="deploy-log")

    gr.Markdown("### SD Studio endpoints and Lambda functions")
    with gr.Row():
        refresh = gr.Button("Refresh list", size="sm", elem_id="deploy-refresh")
    table = gr.Dataframe(
        headers=list(deploy.TABLE_HEADERS), type="array", interactive=False, elem_id="deploy-table", wrap=True
    )
    with gr.Row():
        selected = gr.Dropdown(choices=[], label="Endpoint", allow_custom_value=True, elem_id="deploy-selected")
        use_button = gr.Button("Use this endpoint", visible=on_use_endpoint is not None, elem_id="deploy-use")
    details = gr.Markdown(elem_id="deploy-details")
    with gr.Row():
        confirm_delete = gr.Checkbox(label="Yes, delete this endpoint", value=False, elem_id="deploy-confirm-delete")
        delete_artifacts = gr.Checkbox(label="Also delete the uploaded model files", value=False)
        delete_button = gr.Button("Delete", variant="stop", elem_id="deploy-delete")

    private = {"api_visibility": "private"}
    one_at_a_time = {"concurrency_id": "deploy", "concurrency_limit": 1}
    price_inputs = [instance_type, mode, min_instances, max_instances]
    gr.on([component.change for component in price_inputs], show_price, price_inputs, price, **private)
    plan_inputs = [name, model, instance_type, mode, min_instances, max_instances, bucket, prefix, role, image, region]
    create_inputs = [*plan_inputs, accept, skip_verify, network_isolation, vendor_wheels]
    deploy_button.click(create_endpoint, create_inputs, log_box, **private, **one_at_a_time).then(
        list_rows, [region, name], [table, selected], **private
    )
    build_button.click(build_image, [repo, region, image], [log_box, image], **private, **one_at_a_time)
    target.change(show_target, target, [sagemaker_box, lambda_box], **private)
    lambda_memory.change(show_lambda_price, lambda_memory, lambda_price, **private)
    lambda_inputs = [name, lambda_image, model, lambda_memory, lambda_timeout, public_url, region, lambda_accept]
    lambda_button.click(create_lambda, lambda_inputs, log_box, **private, **one_at_a_time).then(
        list_rows, [region, name], [table, selected], **private
    )
    refresh.click(list_rows, [region, selected], [table, selected], **private)
    selected.change(show_details, [selected, region], details, **private)
    delete_button.click(
        delete_endpoint, [selected, confirm_delete, delete_artifacts, region], log_box, **private, **one_at_a_time
    ).then(list_rows, [region, selected], [table, selected], **private).then(unticked, None, confirm_delete, **private)
    use_button.click(bind(use_selected, on_use_endpoint), selected, details, **private)
