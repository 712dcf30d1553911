"""The deploy CLI: `python -m studio.deploy create|status|list|delete|package` (the scripting interface).

Output is plain text on stdout; the exit code is 0 ok, 1 failure, 2 usage, 3 not confirmed, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import studio.deploy
from studio.deploy import cli_extras, lambda_cli
from studio.deploy.create import create
from studio.deploy.delete import delete
from studio.deploy.inventory import TABLE_HEADERS, list_targets, status
from studio.deploy.package import package_model
from studio.deploy.plan import DEFAULT_PREFIX, MODES, DeployError, DeployPlan
from studio.deploy.pricing import DEFAULT_INSTANCE_TYPE, INSTANCE_PRICES, PRICE_NOTE, describe_price


def _print(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _print_progress(step: str, message: str) -> None:
    _print(f"[{step}] {message}")


def _format_table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=False)).rstrip() for row in [headers, *rows]]
    return "\n".join(lines)


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        _print(f"{question} [y/N] (no terminal to ask; pass --yes to confirm)")
        return False
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def _add_extra_files(parser: argparse.ArgumentParser) -> None:
    """--lora / --vae (repeatable) and the --models-dir their names are looked up in."""
    parser.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="FILE_OR_NAME",
        help="a LoRA file, or a name in MODELS_DIR/Lora, to package as Lora/<file> (repeatable)",
    )
    parser.add_argument(
        "--vae",
        action="append",
        default=[],
        metavar="FILE_OR_NAME",
        help="a VAE file, or a name in MODELS_DIR/VAE, to package as VAE/<file> (repeatable)",
    )
    parser.add_argument(
        "--models-dir", type=Path, default=Path("models"), help="where --lora/--vae names are found (./models)"
    )


def build_parser() -> argparse.ArgumentParser:
    description = (studio.deploy.__doc__ or "").splitlines()[0]
    parser = argparse.ArgumentParser(prog="python -m studio.deploy", description=description)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    create_p = sub.add_parser("create", help="deploy a model to a new SageMaker endpoint")
    create_p.add_argument("--name", required=True, help="endpoint name (letters, digits, hyphens; max 63)")
    create_p.add_argument(
        "--model",
        help="local folder/file, s3://…/model.tar.gz, hub id, or 'demo' (--target lambda: the function's STUDIO_MODEL)",
    )
    create_p.add_argument(
        "--instance-type",
        default=DEFAULT_INSTANCE_TYPE,
        metavar="TYPE",
        help=f"GPU instance type (default {DEFAULT_INSTANCE_TYPE}): {', '.join(INSTANCE_PRICES)}",
    )
    create_p.add_argument("--mode", choices=MODES, default="realtime", help="realtime (default) or async")
    create_p.add_argument("--min-instances", type=int, default=None, help="default 1 (realtime) / 0 (async)")
    create_p.add_argument("--max-instances", type=int, default=1)
    create_p.add_argument("--bucket", help="S3 bucket (default sagemaker-{region}-{account}, created if missing)")
    create_p.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"S3 key prefix (default {DEFAULT_PREFIX})")
    create_p.add_argument("--role", help="SageMaker execution role ARN (discovered on a SageMaker notebook)")
    create_p.add_argument("--image", help="container image URI (default: the AWS PyTorch inference DLC)")
    create_p.add_argument("--region")
    _add_extra_files(create_p)
    cli_extras.add_create_flags(create_p)
    create_p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    create_p.add_argument("--poll-seconds", type=float, default=15.0, help=argparse.SUPPRESS)

    status_p = sub.add_parser("status", help="show one endpoint")
    status_p.add_argument("--name", required=True)
    status_p.add_argument("--region")

    list_p = sub.add_parser("list", help="list the endpoints and Lambda functions deployed by SD Studio")
    list_p.add_argument("--region")

    delete_p = sub.add_parser("delete", help="delete an endpoint and everything created for it")
    delete_p.add_argument("--name", required=True)
    delete_p.add_argument("--region")
    delete_p.add_argument("--delete-artifacts", action="store_true", help="also delete the uploaded model files")
    cli_extras.add_delete_flags(delete_p)
    delete_p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    delete_p.add_argument("--poll-seconds", type=float, default=10.0, help=argparse.SUPPRESS)

    lambda_cli.add_target_flags(create_p, status_p, delete_p)

    package_p = sub.add_parser("package", help="only write model.tar.gz (no AWS calls)")
    package_p.add_argument("--model", required=True)
    package_p.add_argument("--out", default="model.tar.gz")
    _add_extra_files(package_p)
    cli_extras.add_wheel_flags(package_p)
    cli_extras.add_build_image_parser(sub)
    return parser


def run_create(args: argparse.Namespace) -> int:
    if args.target == "lambda":
        return lambda_cli.run_create(args, _print, _print_progress, _confirm)
    if not args.model:
        _print("error: create --target sagemaker needs --model")
        return 2
    plan = DeployPlan(
        name=args.name,
        model=args.model,
        instance_type=args.instance_type,
        mode=args.mode,
        min_instances=args.min_instances,
        max_instances=args.max_instances,
        bucket=args.bucket,
        prefix=args.prefix,
        role=args.role,
        image=args.image,
        region=args.region,
        loras=args.lora,
        vaes=args.vae,
        models_dir=args.models_dir,
        **cli_extras.plan_options(args),
    ).validate()
    _print(f"Deploying {plan.model} as {plan.mode} endpoint {plan.name!r} in {plan.region}")
    for path, arcname in plan.extra_files():
        _print(f"  with {arcname} ({path})")
    cli_extras.describe_plan(plan, _print)
    _print(describe_price(plan.instance_type, plan.mode, plan.min_instances, plan.max_instances))
    if not args.yes and not _confirm("Create it?"):
        _print("Not confirmed; nothing was created.")
        return 3
    result = create(plan, _print_progress, poll_seconds=args.poll_seconds)
    _print(cli_extras.ready_message(result))
    return 0


def run_status(args: argparse.Namespace) -> int:
    if args.target == "lambda":
        return lambda_cli.run_status(args, _print, lambda rows: _format_table(rows, TABLE_HEADERS))
    info = status(args.name, args.region)
    _print(_format_table([info.row()], TABLE_HEADERS))
    _print(
        f"config {info.endpoint_config_name}; model(s) {', '.join(info.model_names) or '-'}; "
        f"autoscaling {info.min_instances}-{info.max_instances}"
    )
    if info.async_output_path:
        _print(f"async output {info.async_output_path}; failures {info.async_failure_path}")
    if info.failure_reason:
        _print(f"FailureReason: {info.failure_reason}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    endpoints = list_targets(args.region)
    if not endpoints:
        _print("No SD Studio endpoints.")
        return 0
    _print(_format_table([e.row() for e in endpoints], TABLE_HEADERS))
    total = sum(e.estimated_cost_per_hour or 0 for e in endpoints)
    _print(f"Estimated total ${total:.2f}/h ({PRICE_NOTE}).")
    return 0


def run_delete(args: argparse.Namespace) -> int:
    if args.target == "lambda":
        return lambda_cli.run_delete(args, _print, _print_progress, _confirm)
    if not args.yes and not _confirm(f"Delete endpoint {args.name!r} and everything created for it?"):
        _print("Not confirmed; nothing was deleted.")
        return 3
    repo = (args.repo or cli_extras.build_repository(args.name, args.region)) if args.all_artifacts else None
    artifacts = args.delete_artifacts or args.all_artifacts
    report = delete(args.name, artifacts, args.region, _print_progress, poll_seconds=args.poll_seconds)
    _print(report.summary())
    built_ok = cli_extras.delete_build(repo, args.region, _print, _print_progress) if args.all_artifacts else True
    return 0 if report.ok and built_ok else 1


def run_package(args: argparse.Namespace) -> int:
    plan = DeployPlan(
        name="package",
        model=args.model,
        loras=args.lora,
        vaes=args.vae,
        models_dir=args.models_dir,
        **cli_extras.plan_options(args),
    )
    plan.validate_offline()
    path = package_model(plan, args.out)
    _print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


COMMANDS = {"create": run_create, "status": run_status, "list": run_list, "delete": run_delete, "package": run_package}
COMMANDS["build-image"] = lambda args: cli_extras.run_build_image(args, _print, _print_progress)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 1 failure, 2 usage, 3 not confirmed, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return COMMANDS[args.command](args)
    except DeployError as exc:
        _print(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        _print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
