"""`python -m studio.deploy` against moto: create, list, status, delete; confirmation and errors."""

from __future__ import annotations

import os
import subprocess
import sys

from studio.deploy.__main__ import main
from studio.testing.servers import REPO


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().out


def test_cli_create_list_status_delete(account, capsys):
    common = ["--region", account.REGION]
    code, out = run_cli(
        ["create", "--name", "sd-cli", "--model", "s3://b-1/m.tar.gz", "--instance-type", "ml.g4dn.xlarge",
         "--mode", "async", "--max-instances", "2", "--role", account.ROLE, "--yes", "--poll-seconds", "0.01",
         "--skip-verify", *common],
        capsys,
    )  # fmt: skip
    assert code == 0, out
    assert "ml.g4dn.xlarge: $0.736 per instance-hour" in out  # price before deploying
    for step in ("[validate]", "[package]", "[model]", "[endpoint-config]", "[endpoint]", "[wait]", "[autoscaling]"):
        assert step in out
    assert "WARNING: --skip-verify" in out and "[verify] SKIPPED" in out
    assert "Endpoint sd-cli is InService but was NOT verified (--skip-verify)" in out

    code, out = run_cli(["list", *common], capsys)
    assert code == 0
    header, row = out.splitlines()[:2]
    assert header.split() == ["name", "status", "mode", "instance", "type", "instances", "age", "est.", "$/h"]
    assert row.split() == ["sd-cli", "InService", "async", "ml.g4dn.xlarge", "1", "0m", "$0.74"]

    code, out = run_cli(["status", "--name", "sd-cli", *common], capsys)
    assert code == 0 and "autoscaling 0-2" in out and "async output s3://" in out

    code, out = run_cli(["delete", "--name", "sd-cli", "--yes", "--poll-seconds", "0.01", *common], capsys)
    assert code == 0, out
    assert "verified: nothing is left" in out
    account.assert_nothing_left()

    code, out = run_cli(["delete", "--name", "sd-cli", "--yes", *common], capsys)
    assert code == 0 and "nothing to delete" in out
    code, out = run_cli(["list", *common], capsys)
    assert out.strip() == "No SD Studio endpoints."
    code, out = run_cli(["status", "--name", "sd-cli", *common], capsys)
    assert code == 1 and "no endpoint named 'sd-cli'" in out


def test_cli_refuses_without_confirmation_and_reports_errors(account, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", open(__file__))  # not a terminal: cannot ask  # noqa: SIM115
    base = ["create", "--name", "sd-ask", "--model", "org/model", "--instance-type", "ml.g4dn.xlarge"]
    code, out = run_cli([*base, "--role", account.ROLE], capsys)
    assert code == 3 and "nothing was created" in out
    account.assert_nothing_left()

    code, out = run_cli(["create", "--name", "bad_name", "--model", "org/model", "--yes"], capsys)
    assert code == 1
    assert out.startswith("error: validate: name: 'bad_name' is not a valid SageMaker endpoint name")
    code, out = run_cli([*base, "--yes"], capsys)  # no role, not on a notebook
    assert code == 1 and "validate: role:" in out

    code, out = run_cli(["delete", "--name", "sd-ask"], capsys)
    assert code == 3 and "nothing was deleted" in out


def test_cli_reports_aws_failures_without_a_traceback(account, capsys, monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code, out = run_cli(["list"], capsys)
    assert code == 1 and out.startswith("error: list: no AWS credentials found")


def test_cli_runs_as_a_module_against_moto(account):
    """The real entry point, in a subprocess that reaches moto only through AWS_ENDPOINT_URL."""
    out = subprocess.run(
        [sys.executable, "-m", "studio.deploy", "list"], cwd=REPO, capture_output=True, text=True, env=dict(os.environ)
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "No SD Studio endpoints."
    assert out.stderr == ""  # no runpy warning about studio.deploy.__main__ being imported twice
    bad = subprocess.run(
        [sys.executable, "-m", "studio.deploy", "delete", "--name", "x_y", "--yes"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ),
    )
    assert bad.returncode == 1 and "not a valid SageMaker endpoint name" in bad.stdout
