"""studio.hosting: SageMaker detection from the resource metadata file, the root path gradio gets, TLS options,
exposure warnings and the share-link checks (no gradio, no network beyond 127.0.0.1)."""

from __future__ import annotations

import json
import socket
import time

import pytest

from studio import hosting
from studio.config import ConfigError, Settings, load_settings
from studio.hosting import Place, SageMakerHost

NOTEBOOK = {"ResourceArn": "arn:aws:sagemaker:us-east-1:123456789012:notebook-instance/my-nb", "ResourceName": "my-nb"}


def studio_app(app_type: str) -> dict[str, str]:
    """A SageMaker Studio app's metadata file (the fields Studio writes; values made up)."""
    return {
        "AppType": app_type,
        "DomainId": "d-abc123def456",
        "SpaceName": "my-space",
        "UserProfileName": "alice",
        "ExecutionRoleArn": "arn:aws:iam::123456789012:role/Studio",
        "ResourceArn": f"arn:aws:sagemaker:eu-west-1:123456789012:app/d-abc123def456/my-space/{app_type}/default",
        "ResourceName": "default",
        "AppImageVersion": "",
    }


@pytest.fixture
def metadata(tmp_path):
    path = tmp_path / "resource-metadata.json"

    def write(content: dict | str) -> object:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        return path

    return write


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (NOTEBOOK, SageMakerHost(Place.NOTEBOOK_INSTANCE, "my-nb", "us-east-1")),
        (studio_app("JupyterLab"), SageMakerHost(Place.STUDIO_JUPYTERLAB, "my-space", "eu-west-1", "d-abc123def456")),
        (studio_app("CodeEditor"), SageMakerHost(Place.STUDIO_CODE_EDITOR, "my-space", "eu-west-1", "d-abc123def456")),
        (studio_app("JupyterServer"), SageMakerHost(Place.STUDIO_CLASSIC, "my-space", "eu-west-1", "d-abc123def456")),
        (studio_app("KernelGateway"), SageMakerHost(Place.STUDIO_KERNEL, "my-space", "eu-west-1", "d-abc123def456")),
        (studio_app("Canvas"), None),
        ({}, None),
        ("not json", None),
        ("[1, 2]", None),
    ],
    ids=["notebook", "jupyterlab", "code-editor", "classic", "kernel", "canvas", "empty", "bad-json", "list"],
)
def test_detect_sagemaker(metadata, content, expected):
    assert hosting.detect_sagemaker(metadata(content)) == expected


def test_no_metadata_file_is_not_sagemaker(tmp_path):
    assert hosting.detect_sagemaker(tmp_path / "missing.json") is None


@pytest.mark.parametrize(
    ("content", "root_path", "url"),
    [
        (NOTEBOOK, "/proxy/7860", "https://my-nb.notebook.us-east-1.sagemaker.aws/proxy/7860/"),
        (
            studio_app("JupyterLab"),
            "/jupyterlab/default/proxy/7860",
            "https://d-abc123def456.studio.eu-west-1.sagemaker.aws/jupyterlab/default/proxy/7860/",
        ),
        (
            studio_app("CodeEditor"),
            "/codeeditor/default/ports/7860",
            "https://d-abc123def456.studio.eu-west-1.sagemaker.aws/codeeditor/default/ports/7860/",
        ),
        (
            studio_app("JupyterServer"),
            "/jupyter/default/proxy/7860",
            "https://d-abc123def456.studio.eu-west-1.sagemaker.aws/jupyter/default/proxy/7860/",
        ),
    ],
    ids=["notebook", "jupyterlab", "code-editor", "classic"],
)
def test_plan_sets_the_proxy_root_path_and_says_where_to_go(metadata, content, root_path, url):
    plan = hosting.plan(Settings(), metadata_file=metadata(content))
    assert plan.root_path == root_path and plan.launch_kwargs == {"root_path": root_path}
    assert len(plan.messages) == 1 and url in plan.messages[0], plan.messages
    if content is not NOTEBOOK:  # Studio's host is the one the browser shows: the message says so
        assert "Studio domain's address" in plan.messages[0]
    assert not plan.warnings


def test_the_port_goes_into_the_prefix(metadata):
    plan = hosting.plan(load_settings(["--port", "8123"], environ={}), metadata_file=metadata(NOTEBOOK))
    assert plan.root_path == "/proxy/8123"


@pytest.mark.parametrize(
    ("given", "expected"), [("/custom/prefix", "/custom/prefix"), ("/proxy/9000/", "/proxy/9000"), ("", None)]
)
def test_root_path_flag_overrides_detection(metadata, given, expected):
    settings = load_settings(["--root-path", given], environ={}) if given else Settings(root_path="")
    plan = hosting.plan(settings, metadata_file=metadata(NOTEBOOK))
    assert plan.root_path == expected
    assert plan.launch_kwargs.get("root_path") == expected


def test_root_path_from_the_environment_variable(tmp_path):
    settings = load_settings([], environ={"STUDIO_ROOT_PATH": "/behind/nginx"})
    plan = hosting.plan(settings, metadata_file=tmp_path / "none.json")
    assert plan.launch_kwargs == {"root_path": "/behind/nginx"}
    assert "/behind/nginx/" in plan.messages[0]


def test_not_on_sagemaker_nothing_changes(tmp_path):
    plan = hosting.plan(Settings(), metadata_file=tmp_path / "none.json")
    assert plan.launch_kwargs == {} and plan.messages == [] and plan.warnings == []


def test_kernel_app_gets_a_warning_not_a_prefix(metadata):
    plan = hosting.plan(Settings(), metadata_file=metadata(studio_app("KernelGateway")))
    assert plan.root_path is None and "System terminal" in plan.warnings[0]


# ---- TLS and exposure --------------------------------------------------------------------------------------------
def test_tls_files_become_gradio_ssl_options(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("CERT")
    key.write_text("KEY")
    settings = load_settings(["--tls-cert", str(cert), "--tls-key", str(key), "--host", "0.0.0.0"], environ={})
    plan = hosting.plan(settings, metadata_file=tmp_path / "none.json")
    assert plan.launch_kwargs == {"ssl_certfile": str(cert), "ssl_keyfile": str(key), "ssl_verify": False}
    assert plan.tls and plan.warnings == []  # exposed, but encrypted


def test_missing_tls_file_names_the_flag(tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text("CERT")
    settings = load_settings(["--tls-cert", str(cert), "--tls-key", str(tmp_path / "nope.pem")], environ={})
    with pytest.raises(ConfigError, match="--tls-key: no such file"):
        hosting.plan(settings, metadata_file=tmp_path / "none.json")


def test_tls_flags_go_together():
    with pytest.raises(ConfigError, match="--tls-cert and --tls-key go together"):
        load_settings(["--tls-cert", "cert.pem"], environ={})


@pytest.mark.parametrize(
    ("settings", "warned"),
    [
        (Settings(), False),
        (Settings(host="localhost"), False),
        (Settings(host="::1"), False),
        (Settings(host="0.0.0.0", auth="alice:pw"), True),
        (Settings(host="10.1.2.3", no_auth=True), True),
        (Settings(share=True, auth="alice:pw"), False),  # a share link is HTTPS
    ],
)
def test_exposed_without_tls_warns_how_to_add_it(tmp_path, settings, warned):
    plan = hosting.plan(settings, metadata_file=tmp_path / "none.json", check_share=False)
    if warned:
        (warning,) = plan.warnings
        assert f"--host {settings.host}" in warning and "--tls-cert" in warning and "--tls-key" in warning
        assert "openssl req -x509" in warning
    else:
        assert plan.warnings == []


def test_announce_logs_messages_and_warnings(tmp_path, metadata, caplog):
    settings = Settings(host="0.0.0.0", auth="a:b")
    plan = hosting.plan(settings, metadata_file=metadata(NOTEBOOK))
    with caplog.at_level("INFO", logger="studio.hosting"):
        plan.announce()
    levels = {record.levelname for record in caplog.records}
    assert levels == {"INFO", "WARNING"} and "notebook.us-east-1.sagemaker.aws" in caplog.text


# ---- share links ----------------------------------------------------------------------------------------------------
def test_share_check_fails_fast_on_a_closed_port():
    with socket.socket() as sock:  # a loopback port nobody listens on: refused at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(ConfigError, match="--share needs the internet"):
        hosting.check_share_reachable("127.0.0.1", timeout=5, port=port)
    assert time.monotonic() - started < 5


def test_share_check_is_bounded_when_the_lookup_hangs(monkeypatch):
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: time.sleep(30))
    started = time.monotonic()
    with pytest.raises(ConfigError, match="no answer within 1s"):
        hosting.check_share_reachable(timeout=1)
    assert time.monotonic() - started < 3


def test_share_check_passes_when_reachable(monkeypatch):
    class Connection:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: Connection())
    hosting.check_share_reachable(timeout=1)


def test_share_link_missing_after_launch_closes_and_explains():
    class Blocks:
        share_url = None
        closed = False

        def close(self):
            self.closed = True

    blocks = Blocks()
    with pytest.raises(ConfigError, match="could not create the share link"):
        hosting.check_share_link(blocks, Settings(share=True, auth="a:b"))
    assert blocks.closed
    hosting.check_share_link(Blocks(), Settings())  # no --share: nothing to check
