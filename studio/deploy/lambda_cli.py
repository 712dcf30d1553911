"""`--target lambda` of the deploy CLI (studio.deploy.__main__): its flags and its create / status / delete commands.

    python -m studio.deploy create --target lambda --name N --image-uri ECR_URI [--memory 10240] [--timeout 900]
        [--ephemeral-storage MB] [--model PATH|demo|s3://...] [--role ARN] [--public-url] [--s3-output S3_URI]
        [--s3-allowed-prefix S3_URI ...] [--region R] [--yes]
    python -m studio.deploy status --target lambda --name N
    python -m studio.deploy delete --target lambda --name N [--yes]

`list` shows the Lambda functions beside the endpoints (studio.deploy.inventory.list_targets).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from studio.deploy.lambda_ import (
    LambdaPlan,
    create_function,
    delete_function,
    describe_lambda_price,
    function_status,
)

TARGETS = ("sagemaker", "lambda")

Print = Callable[[str], None]
Confirm = Callable[[str], bool]


def add_target_flags(
    create: argparse.ArgumentParser, status: argparse.ArgumentParser, delete: argparse.ArgumentParser
) -> None:
    """--target on create/status/delete, and create's Lambda-only flags."""
    for parser in (create, status, delete):
        parser.add_argument(
            "--target", choices=TARGETS, default="sagemaker", help="sagemaker (an endpoint, default) or lambda"
        )
    group = create.add_argument_group("--target lambda")
    group.add_argument("--image-uri", metavar="ECR_URI", help="the image built from Dockerfile.lambda, pushed to ECR")
    group.add_argument("--memory", type=int, default=10240, metavar="MB", help="128-10240 (default 10240: 6 vCPUs)")
    group.add_argument("--timeout", type=int, default=900, metavar="S", help="1-900 seconds (default 900)")
    group.add_argument(
        "--ephemeral-storage",
        type=int,
        default=512,
        metavar="MB",
        help="/tmp size, 512-10240 (an s3:// model needs it)",
    )
    group.add_argument(
        "--public-url",
        action="store_true",
        help="function URL without auth (AuthType NONE): anyone with the URL can generate at your expense",
    )
    group.add_argument("--s3-output", metavar="S3_URI", help="STUDIO_S3_OUTPUT: write images there, answer URIs")
    group.add_argument(
        "--s3-allowed-prefix",
        action="append",
        default=[],
        metavar="S3_URI",
        help="STUDIO_S3_ALLOWED_PREFIXES: where requests may read/write (repeatable)",
    )


def run_create(args: argparse.Namespace, say: Print, progress: Callable[[str, str], None], confirm: Confirm) -> int:
    plan = LambdaPlan(
        name=args.name,
        image_uri=args.image_uri or "",
        memory=args.memory,
        timeout=args.timeout,
        ephemeral_storage=args.ephemeral_storage,
        role=args.role,
        public_url=args.public_url,
        model=args.model,
        s3_output=args.s3_output,
        s3_allowed_prefixes=tuple(args.s3_allowed_prefix),
        region=args.region,
    ).validate()
    say(
        f"Deploying {plan.image_uri} as Lambda function {plan.name!r} in {plan.region} "
        f"({plan.memory} MB, {plan.timeout} s)"
    )
    say(describe_lambda_price(plan.memory))
    if plan.public_url:
        say("WARNING: --public-url makes the function URL public (AuthType NONE): anyone who has the URL can generate")
        say("images on your account. Without it the URL uses AuthType AWS_IAM and callers sign with SigV4.")
    if not args.yes and not confirm("Create it?"):
        say("Not confirmed; nothing was created.")
        return 3
    result = create_function(plan, progress, poll_seconds=min(args.poll_seconds, 5.0))
    say(f"Function {result.function_name} is ready ({result.seconds:.0f} s).")
    say(f"Function URL ({result.auth_type}): {result.function_url}")
    say(f"Use it with: --backend lambda --function {result.function_name}  (or --function {result.function_url})")
    return 0


def run_status(args: argparse.Namespace, say: Print, table: Callable[[list[list[str]]], str]) -> int:
    info = function_status(args.name, args.region)
    say(table([info.row()]))
    say(
        f"image {info.image_uri or '?'}; timeout {info.timeout} s; "
        f"function URL {info.url or '-'} ({info.auth_type or '-'})"
    )
    return 0


def run_delete(args: argparse.Namespace, say: Print, progress: Callable[[str, str], None], confirm: Confirm) -> int:
    question = f"Delete Lambda function {args.name!r}, its URL, role and log group?"
    if not args.yes and not confirm(question):
        say("Not confirmed; nothing was deleted.")
        return 3
    report = delete_function(args.name, args.region, progress)
    say(report.summary())
    return 0 if report.ok else 1
