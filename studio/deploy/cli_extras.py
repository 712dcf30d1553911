"""The deploy CLI's options for a verified, self-contained deploy and the project's own image (issue 13).

Kept apart from studio.deploy.__main__ so that file only wires them in:
- create: --skip-verify, --keep-on-failure, --verify-timeout, --network-isolation, --vendor-wheels, --wheels-python;
- package: --vendor-wheels, --wheels-python;
- delete: --all-artifacts (the model files and what build-image made for the endpoint's image, or for --repo);
- build-image --repo NAME: the Dockerfile built on CodeBuild and pushed to ECR; prints the image URI.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from studio.deploy.plan import DEFAULT_PREFIX, DLC_PYTHON, VERIFY_TIMEOUT_SECONDS

Say = Callable[[str], None]
Progress = Callable[[str, str], None]


def add_wheel_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--vendor-wheels",
        action="store_true",
        help="put the container's wheels into code/wheels/ so the endpoint installs them with no index (no internet)",
    )
    parser.add_argument(
        "--wheels-python",
        default=DLC_PYTHON,
        metavar="X.Y",
        help=f"the container's Python the wheels are for (default {DLC_PYTHON}, the PyTorch DLC's)",
    )


def add_create_flags(parser: argparse.ArgumentParser) -> None:
    add_wheel_flags(parser)
    parser.add_argument(
        "--network-isolation",
        action="store_true",
        help="EnableNetworkIsolation: the container gets no network (implies --vendor-wheels on the DLC)",
    )
    parser.add_argument(
        "--skip-verify",
        action="store_true",
        help="do not send the smoke-test request after InService (for emulators such as moto; prints a warning)",
    )
    parser.add_argument(
        "--keep-on-failure",
        action="store_true",
        help="leave what a failed create made (to inspect it); delete it afterwards",
    )
    parser.add_argument(
        "--verify-timeout",
        type=float,
        default=VERIFY_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help=f"how long the smoke test waits for the first image (default {VERIFY_TIMEOUT_SECONDS:.0f})",
    )


def add_delete_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--all-artifacts",
        action="store_true",
        help="also delete the uploaded model files and what build-image made for the endpoint's image (or --repo)",
    )
    parser.add_argument("--repo", help="with --all-artifacts: the ECR repository build-image made")


def add_build_image_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "build-image", help="build the project's Dockerfile with AWS CodeBuild (no local Docker) and push it to ECR"
    )
    parser.add_argument("--repo", required=True, help="ECR repository name (created and tagged if missing)")
    parser.add_argument("--tag", help="image tag (default: the UTC time)")
    parser.add_argument("--bucket", help="S3 bucket for the build context (default sagemaker-{region}-{account})")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"S3 key prefix (default {DEFAULT_PREFIX})")
    parser.add_argument("--region")
    parser.add_argument("--poll-seconds", type=float, default=10.0, help=argparse.SUPPRESS)


def plan_options(args: argparse.Namespace) -> dict[str, Any]:
    """DeployPlan keyword arguments from these flags (package has only the wheel ones)."""
    options: dict[str, Any] = {"vendor_wheels": args.vendor_wheels, "wheels_python": args.wheels_python}
    if hasattr(args, "skip_verify"):
        options.update(
            network_isolation=args.network_isolation,
            verify=not args.skip_verify,
            keep_on_failure=args.keep_on_failure,
            verify_timeout_seconds=args.verify_timeout,
        )
    return options


def describe_plan(plan: Any, say: Say) -> None:
    """The lines `create` prints about packaging, isolation and the smoke test before asking to confirm."""
    if plan.own_image:
        say(f"  image: the project's own serving image {plan.image}")
    elif plan.vendors_wheels:
        say(f"  wheels: vendored for Python {plan.wheels_python} (the endpoint installs nothing from the internet)")
    if plan.network_isolation:
        say("  network isolation: on (the container gets no network)")
    if not plan.verify:
        say("  WARNING: --skip-verify: the endpoint will not be asked for an image before it is reported ready")


def ready_message(result: Any) -> str:
    use = f"Use it with: --backend sagemaker --endpoint {result.endpoint_name}"
    if result.verified:
        return f"Endpoint {result.endpoint_name} is ready: it generated the smoke-test image. {use}"
    return f"Endpoint {result.endpoint_name} is InService but was NOT verified (--skip-verify). {use}"


def run_build_image(args: argparse.Namespace, say: Say, progress: Progress) -> int:
    from studio.deploy.build_image import build_image

    result = build_image(
        args.repo,
        progress,
        region=args.region,
        bucket=args.bucket,
        prefix=args.prefix,
        tag=args.tag,
        poll_seconds=args.poll_seconds,
    )
    say(f"Image: {result.image_uri}")
    say(f"Deploy it with: python -m studio.deploy create --image {result.image_uri} --name NAME --model MODEL")
    return 0


def build_repository(endpoint: str, region: str | None) -> str | None:
    """The ECR repository of the endpoint's image when it is one build-image made (read before deleting)."""
    from studio import aws
    from studio.deploy.build_image import _owned_repository
    from studio.deploy.plan import resolve_region

    region = resolve_region(region)
    sm = aws.client("sagemaker", region)
    try:
        config = sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
        model = sm.describe_endpoint_config(EndpointConfigName=config)["ProductionVariants"][0]["ModelName"]
        image = sm.describe_model(ModelName=model)["PrimaryContainer"]["Image"]
    except Exception as exc:  # noqa: BLE001 - no endpoint (already deleted) or no image: nothing to find
        if not aws.is_not_found(exc):
            raise
        return None
    if ".dkr.ecr." not in image or "/pytorch-inference:" in image:
        return None
    repo = image.split("/", 1)[1].split("@")[0].rsplit(":", 1)[0]
    return repo if _owned_repository(aws.client("ecr", region), repo) else None


def delete_build(repo: str | None, region: str | None, say: Say, progress: Progress) -> bool:
    """--all-artifacts: remove what build-image made for `repo`; True when nothing is left."""
    from studio.deploy.build_image import delete_build_artifacts

    if not repo:
        say("No build-image artifacts to delete (the endpoint does not use an image build-image made; see --repo).")
        return True
    report = delete_build_artifacts(repo, region, progress)
    say(f"build-image artifacts of {repo}: deleted {len(report.deleted)}" + ("" if report.ok else ", some are left"))
    return report.ok
