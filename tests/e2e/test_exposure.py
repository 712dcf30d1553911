"""Exposure and secrets: who can reach the studio, which files it serves, what a checkpoint may run, and where
credentials may (never) appear.

- A non-loopback address or --share needs --auth (or an explicit --no-auth); the refusal says so.
- --auth covers the UI and every API route.
- Gradio serves files only from the outputs folder and its own temp folder: no traversal, no symlink escape.
- A malicious .ckpt runs nothing, gives a clear error, and never makes /ping healthy.
- AWS credentials never appear in logs, errors or the UI.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import pickle
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
import requests

import app
from studio.config import ConfigError, Settings, load_settings
from studio.testing.browser import REPO, free_port, start_studio
from studio.testing.gradio_api import api_values
from studio.testing.moto import MotoServer
from studio.testing.servers import UvicornThread

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from studio.ui.img2img import img2img  # noqa: E402

VALID = ["a lighthouse", "", "Euler a", 2, 7, 5, 64, 64, 1]


# ---- refusing to expose the studio without a password ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("settings", "refused"),
    [
        (Settings(), False),
        (Settings(host="localhost"), False),
        (Settings(host="127.0.0.2"), False),
        (Settings(host="::1"), False),
        (Settings(host="0.0.0.0"), True),
        (Settings(host="::"), True),
        (Settings(host="192.168.1.20"), True),
        (Settings(host="studio.example.com"), True),  # a name is not known to be loopback
        (Settings(share=True), True),
        (Settings(host="0.0.0.0", share=True), True),
        (Settings(host="0.0.0.0", auth="alice:s3cret"), False),
        (Settings(share=True, auth="alice:s3cret"), False),
        (Settings(host="0.0.0.0", no_auth=True), False),
    ],
    ids=lambda v: str(v) if isinstance(v, bool) else f"{v.host},share={v.share},auth={bool(v.auth)},{v.no_auth}",
)
def test_check_exposure(settings, refused):
    if refused:
        with pytest.raises(ConfigError) as caught:
            app.check_exposure(settings)
        message = str(caught.value)
        assert "--auth" in message and "--no-auth" in message, message
        assert ("--share" if settings.share else f"--host {settings.host}") in message
    else:
        app.check_exposure(settings)


def test_env_strings_are_parsed_not_trusted():
    """STUDIO_NO_AUTH=false means false: the public address is still refused."""
    settings = load_settings([], environ={"STUDIO_HOST": "0.0.0.0", "STUDIO_NO_AUTH": "false"})
    with pytest.raises(ConfigError, match="--no-auth"):
        app.check_exposure(settings)
    with pytest.raises(ConfigError, match="STUDIO_NO_AUTH"):
        load_settings([], environ={"STUDIO_HOST": "0.0.0.0", "STUDIO_NO_AUTH": "maybe"})


@pytest.mark.parametrize("argv", [["--host", "0.0.0.0"], ["--share"], ["--host", "10.0.0.5", "--share"]])
def test_main_refuses_before_listening(argv, capsys):
    port = free_port()
    assert app.main([*argv, "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--auth user:password" in err and "--no-auth" in err
    with pytest.raises(OSError):  # nothing was started on that port
        socket_connect(port)


def socket_connect(port: int) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_app_py_refuses_in_a_real_process():
    env = {**os.environ, "STUDIO_HOST": "0.0.0.0", "STUDIO_PORT": str(free_port()), "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("STUDIO_AUTH", None)
    env.pop("STUDIO_NO_AUTH", None)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "app.py"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "--host 0.0.0.0" in done.stderr and "--auth" in done.stderr and "--no-auth" in done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 60  # refused up front, nothing heavy loaded


def test_bad_auth_values_are_refused():
    with pytest.raises(ConfigError, match="user:password"):
        app.parse_auth("alice")
    with pytest.raises(ConfigError, match="user:password"):
        app.parse_auth("alice:")


# ---- auth covers the UI and the API -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def locked_studio(tmp_path_factory):
    root = tmp_path_factory.mktemp("locked")
    auth_file = root / "users.txt"
    auth_file.write_text("# studio users\nalice:s3cret\nbob:hunter2:with:colons\n")
    studio = start_studio(root, "--auth", str(auth_file))
    yield studio
    studio.close()


def test_auth_file_users(locked_studio):
    assert app.parse_auth(str(Path(locked_studio.outputs).parent / "users.txt")) == [
        ("alice", "s3cret"),
        ("bob", "hunter2:with:colons"),
    ]


def test_auth_covers_every_api_route(locked_studio):
    url = locked_studio.url
    saved = next(iter(Path(locked_studio.outputs).glob("**/*.png")), None)
    target = saved or Path(locked_studio.outputs)
    calls = [
        ("GET", "config", {}),
        ("GET", "gradio_api/info", {}),
        ("POST", "gradio_api/call/txt2img", {"json": {"data": VALID}}),
        ("POST", "gradio_api/queue/join", {"json": {"data": VALID, "fn_index": 0, "session_hash": "x"}}),
        ("POST", "gradio_api/run/predict", {"json": {"data": [], "fn_index": 0}}),
        ("POST", "gradio_api/upload", {"files": {"files": ("a.png", b"\x89PNG")}}),
        ("GET", f"gradio_api/file={target}", {}),
    ]
    for method, path, kwargs in calls:
        response = requests.request(method, url + path, timeout=10, **kwargs)
        assert response.status_code == 401, (path, response.status_code, response.text[:200])
    # The page itself is only the login form: no components, no values, no paths.
    page = requests.get(url, timeout=10).text
    assert '"auth_required":true' in page.replace(" ", "")
    assert "txt2img-prompt" not in page and str(locked_studio.outputs) not in page


def test_login_then_the_api_works(locked_studio):
    url = locked_studio.url
    with pytest.raises(Exception, match="(?i)login|credentials"):
        Client(url, verbose=False)
    with pytest.raises(Exception):  # noqa: B017 (gradio_client raises a plain ValueError/AuthenticationError)
        Client(url, auth=("alice", "wrong"), verbose=False)
    assert requests.post(url + "login", data={"username": "alice", "password": "wrong"}, timeout=10).status_code >= 400
    client = Client(url, auth=("bob", "hunter2:with:colons"), verbose=False)
    try:
        gallery, info = client.predict(*VALID, api_name="/txt2img")
        assert info["seeds"] == [5] and len(gallery) == 1
    finally:
        client.close()
    # And with a session cookie, the generated file is served.
    session = requests.Session()
    assert session.post(url + "login", data={"username": "alice", "password": "s3cret"}, timeout=10).ok
    assert session.get(f"{url}gradio_api/file={info['paths'][0]}", timeout=10).status_code == 200
    assert requests.get(f"{url}gradio_api/file={info['paths'][0]}", timeout=10).status_code == 401


@pytest.mark.browser
def test_browser_sees_a_login_form_first(locked_studio, page):
    page.goto(locked_studio.url)
    page.get_by_label("username").fill("alice")
    page.get_by_label("password").fill("wrong")
    page.get_by_role("button", name="Login").click()
    page.get_by_text("Incorrect Credentials").wait_for()
    assert page.locator("#txt2img-generate").count() == 0
    page.get_by_label("username").fill("alice")  # the form was cleared
    page.get_by_label("password").fill("s3cret")
    page.get_by_role("button", name="Login").click()
    page.locator("#txt2img-generate").wait_for(state="visible")


# ---- which files gradio serves ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def open_studio(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    studio = start_studio(root)
    (root / "secret.txt").write_text("TOPSECRET next to the outputs folder")
    day = studio.outputs / "2026-01-01"
    day.mkdir(parents=True)
    (day / "ok.png").write_bytes(b"\x89PNG not really")
    os.symlink("/etc/passwd", day / "passwd.png")
    os.symlink(root / "secret.txt", day / "secret.png")
    os.symlink("/etc", studio.outputs / "etc")
    yield studio, root
    studio.close()


def raw_get(url: str, path: str) -> tuple[int, bytes]:
    """GET with the path sent exactly as given (no client-side normalisation of ../ or %2F)."""
    parsed = urllib.parse.urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def traversal_paths(outputs: Path, root: Path) -> list[str]:
    q = urllib.parse.quote
    return [
        "/gradio_api/file=/etc/passwd",
        "/gradio_api/file=%2Fetc%2Fpasswd",
        "/gradio_api/file=//etc/passwd",
        f"/gradio_api/file={outputs}/../../../../../etc/passwd",
        f"/gradio_api/file={outputs}/..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        f"/gradio_api/file={q(str(outputs) + '/../secret.txt', safe='')}",
        f"/gradio_api/file={root}/secret.txt",
        "/gradio_api/file=..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/gradio_api/file=/tmp/gradio/../../etc/passwd",
        "/gradio_api/file=/tmp/gradio/..%2F..%2Fetc%2Fpasswd",
        "/gradio_api/file=/proc/self/environ",
        "/gradio_api/file=~/.bashrc",
        f"/gradio_api/file={REPO}/app.py",
        f"/gradio_api/file={REPO}/.cache/demo-v1/model_index.json",
        f"/gradio_api/file={outputs}/2026-01-01/passwd.png",  # symlink to /etc/passwd inside outputs
        f"/gradio_api/file={outputs}/2026-01-01/secret.png",  # symlink to a file outside outputs
        f"/gradio_api/file={outputs}/etc/passwd",  # symlinked directory
        "/gradio_api/file/etc/passwd",
        "/file=/etc/passwd",
        "/static/../../../../../etc/passwd",
        "/static/..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/assets/..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/gradio_api/stream/etc/passwd",
    ]


def test_no_file_outside_outputs_and_temp_is_served(open_studio):
    studio, root = open_studio
    served = []
    for path in traversal_paths(studio.outputs, root):
        status, body = raw_get(studio.url, path)
        leaked = b"root:" in body or b"TOPSECRET" in body or b"def main" in body or b"_class_name" in body
        if status == 200 or leaked:
            served.append((path, status, body[:80]))
    assert not served, served


def test_outputs_and_gradio_temp_are_served(open_studio):
    studio, _ = open_studio
    status, body = raw_get(studio.url, f"/gradio_api/file={studio.outputs}/2026-01-01/ok.png")
    assert status == 200 and body.startswith(b"\x89PNG")
    client = Client(studio.url, verbose=False)
    try:
        gallery, info = client.predict(*VALID, api_name="/txt2img")
    finally:
        client.close()
    shown = gallery[0]["image"]
    assert status == 200
    assert raw_get(studio.url, f"/gradio_api/file={urllib.parse.quote(shown)}")[0] == 200  # gradio's temp copy
    assert raw_get(studio.url, f"/gradio_api/file={info['paths'][0]}")[0] == 200  # the saved output


def test_api_cannot_make_the_server_read_local_files(open_studio):
    """A FileData path the user did not upload is refused (gradio would otherwise copy it into its cache)."""
    studio, _ = open_studio
    for path in ("/etc/passwd", f"{studio.outputs}/../secret.txt", str(REPO / "app.py")):
        # A raw /call/ request sends every value (gradio_client would fill the defaults).
        named = dict(zip(("prompt", "negative_prompt", "sampler", "steps", "cfg_scale", "seed", "width", "height",
                          "count"), VALID, strict=True))
        data = api_values(img2img, image={"path": path, "meta": {"_type": "gradio.FileData"}}, **named)
        call = requests.post(f"{studio.url}gradio_api/call/img2img", json={"data": data}, timeout=10)
        event_id = call.json()["event_id"]
        stream = requests.get(f"{studio.url}gradio_api/call/img2img/{event_id}", timeout=60).text
        assert "event: error" in stream and "not uploaded by a user" in stream, stream[:300]
        assert "root:" not in stream and "TOPSECRET" not in stream


def test_a_foreign_web_page_cannot_drive_the_local_studio(open_studio):
    """A site the user visits must not be able to start generations on http://127.0.0.1:7860 (CSRF): the CORS
    preflight gives a foreign origin no Access-Control-Allow-Origin, and a "simple" (text/plain) POST is refused."""
    studio, _ = open_studio
    foreign = {"Origin": "https://evil.example"}
    preflight = requests.options(
        f"{studio.url}gradio_api/call/txt2img",
        headers={**foreign, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"},
        timeout=10,
    )
    assert "access-control-allow-origin" not in {k.lower() for k in preflight.headers}
    simple = requests.post(
        f"{studio.url}gradio_api/call/txt2img",
        data='{"data": ["x", "", "Euler a", 2, 7, 1, 64, 64, 1]}',
        headers={**foreign, "Content-Type": "text/plain"},
        timeout=10,
    )
    assert simple.status_code == 422
    local = requests.options(
        f"{studio.url}gradio_api/call/txt2img",
        headers={"Origin": studio.url.rstrip("/"), "Access-Control-Request-Method": "POST"},
        timeout=10,
    )
    assert local.headers.get("access-control-allow-origin") == studio.url.rstrip("/")


# ---- checkpoints that carry code -------------------------------------------------------------------------------------
class _Payload:
    """Unpickling this runs `command` (it would create the marker file)."""

    def __init__(self, how: str, marker: Path):
        self.how, self.marker = how, marker

    def __reduce__(self):
        if self.how == "os.system":
            return (os.system, (f"touch {self.marker}",))
        if self.how == "exec":
            return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))
        return (subprocess.call, (["touch", str(self.marker)],))


def write_malicious(kind: str, path: Path, marker: Path) -> Path:
    import numpy as np
    import torch

    weights = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}
    if kind == "torch-zip":
        torch.save({"state_dict": weights, "callbacks": _Payload("os.system", marker)}, str(path))
    elif kind == "legacy-pickle":
        path.write_bytes(pickle.dumps({"state_dict": weights, "x": _Payload("exec", marker)}, protocol=2))
    elif kind == "numpy-object-array":
        array = np.array([_Payload("subprocess", marker)], dtype=object)
        torch.save({"state_dict": weights, "global_step": array}, str(path))
    elif kind == "top-level":
        torch.save(_Payload("os.system", marker), str(path))
    return path


@pytest.mark.parametrize("kind", ["torch-zip", "legacy-pickle", "numpy-object-array", "top-level"])
def test_malicious_ckpt_runs_nothing_and_fails_clearly(tmp_path, kind):
    from studio.engine import ModelLoadError
    from studio.local_engine import LocalEngine

    marker = tmp_path / "pwned"
    path = write_malicious(kind, tmp_path / "evil.ckpt", marker)
    engine = LocalEngine(str(path), device="cpu")
    with pytest.raises(ModelLoadError) as caught:
        engine.load()
    message = str(caught.value)
    assert message.startswith("evil.ckpt: ") and ("refused to load" in message or "not a readable" in message), message
    assert not marker.exists(), "pickled code ran"
    status = engine.status()
    assert not status.loaded and "evil.ckpt" in (status.error or "")


def test_malicious_ckpt_never_makes_ping_healthy(tmp_path):
    from studio.config import ServingSettings
    from studio.local_engine import LocalEngine
    from studio.serving.app import create_app

    marker = tmp_path / "pwned"
    path = write_malicious("torch-zip", tmp_path / "evil.ckpt", marker)
    engine = LocalEngine(str(path), device="cpu")
    with UvicornThread(create_app(engine, settings=ServingSettings())) as server:
        answers = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            response = requests.get(f"{server.url}/ping", timeout=5)
            answers.append(response.status_code)
            if response.json().get("status") == "error":
                break
            time.sleep(0.1)
        for _ in range(5):  # and it stays unhealthy
            answers.append(requests.get(f"{server.url}/ping", timeout=5).status_code)
        assert set(answers) == {503}, answers
        body = requests.get(f"{server.url}/ping", timeout=5).json()
        assert "refused to load" in body["error"] and "evil.ckpt" in body["error"]
        invoked = requests.post(f"{server.url}/invocations", json={"prompt": "x"}, timeout=10)
        assert invoked.status_code == 503
    assert not marker.exists()


def test_malicious_ckpt_dropped_in_models_dir_keeps_the_studio_up(tmp_path):
    """The default model is the first one in ./models/: an evil one is refused, shown, and the app keeps running."""
    from studio.config import load_settings as load

    marker = tmp_path / "pwned"
    (tmp_path / "models").mkdir()
    write_malicious("torch-zip", tmp_path / "models" / "evil.ckpt", marker)
    port = free_port()
    settings = load(
        ["--port", str(port), "--outputs", str(tmp_path / "outputs"), "--models-dir", str(tmp_path / "models"),
         "--device", "cpu"],
        environ={},
    )
    blocks, controller = app.launch(settings, prevent_thread_lock=True)
    try:
        deadline = time.monotonic() + 60
        while controller.status().loading or (not controller.status().error and time.monotonic() < deadline):
            time.sleep(0.05)
        assert "refused to load" in (controller.status().error or "")
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        with pytest.raises(AppError, match="refused to load"):
            client.predict(*VALID, api_name="/txt2img")
        client.predict("demo", api_name="/load_model")
        assert client.predict(*VALID, api_name="/txt2img")[1]["seeds"] == [5]
        client.close()
    finally:
        blocks.close()
    assert not marker.exists()


# ---- credentials never appear --------------------------------------------------------------------------------------
MARKERS = {
    "AWS_ACCESS_KEY_ID": "AKIAMARKER0123456789",
    "AWS_SECRET_ACCESS_KEY": "secretMARKER/abcdefghijklmnopqrstuvwxyz0123",
    "AWS_SESSION_TOKEN": "tokenMARKER+ZXhhbXBsZS1zZXNzaW9uLXRva2Vu",
}
URL_PASSWORD = "urlpwMARKER0123456789"  # a password inside an http backend URL (user:password@host)


@pytest.fixture
def marked_aws(monkeypatch):
    """AWS credentials set to recognisable markers, every client pointed at a local moto server."""
    with MotoServer() as moto:
        for key, value in MARKERS.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("AWS_ENDPOINT_URL", moto.url)
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        yield moto


def leaks(text: str) -> list[str]:
    secrets = [*MARKERS.values(), URL_PASSWORD]
    return [s for s in secrets if s in text or urllib.parse.quote(s, safe="") in text]


def test_no_credentials_in_logs_errors_or_ui(marked_aws, tmp_path, caplog, capfd):
    caplog.set_level(logging.INFO)
    seen: list[str] = []

    # 1. Starting on a SageMaker endpoint that does not exist: one-line error, exit 2.
    code = app.main(["--backend", "sagemaker", "--endpoint", "no-such-endpoint", "--port", str(free_port()),
                     "--outputs", str(tmp_path / "out1")])
    assert code == 2
    out = capfd.readouterr()
    seen += [out.out, out.err]
    assert "no-such-endpoint" in out.err

    # 2. A running studio: switching to broken backends through the API and the Settings handlers.
    studio = start_studio(tmp_path)
    try:
        client = Client(studio.url, verbose=False)
        with pytest.raises(AppError) as caught:
            client.predict("sagemaker", "no-such-endpoint", api_name="/use_backend")
        seen.append(str(caught.value))
        # An unreachable serving app is accepted as the backend (it may come up later); its status and the
        # failed generation say what is wrong, without the password in the URL.
        seen.append(str(client.predict("http", f"http://admin:{URL_PASSWORD}@127.0.0.1:9/", api_name="/use_backend")))
        with pytest.raises(AppError) as caught:
            client.predict(*VALID, api_name="/txt2img")
        seen.append(str(caught.value))
        with contextlib.suppress(Exception):
            seen.append("\n".join(studio.controller.list_endpoints()))
        from studio.ui.settings import status_markdown

        seen.append(status_markdown(studio.controller.status()))
        seen.append(requests.get(studio.url, timeout=10).text)
        seen.append(requests.get(f"{studio.url}config", timeout=10).text)
        client.close()
    finally:
        studio.close()

    # 3. The deployment helper's start-up check and an S3 read for the serving app, with the service unreachable.
    from studio import wire

    for exc_source in (
        lambda: app.warn_about_running_endpoints(SimpleController()),
        lambda: wire.decode_invocation(
            {"prompt": "x", "input_image": "s3://no-bucket/x.png"}, fetch=wire.S3Reader(s3_client())
        ),
    ):
        try:
            exc_source()
        except Exception as exc:  # noqa: BLE001 (any error text is checked)
            seen.append(f"{type(exc).__name__}: {exc}")

    out = capfd.readouterr()
    seen += [out.out, out.err, caplog.text]
    found = {marker for text in seen for marker in leaks(text)}
    assert not found, f"credentials appeared: {found}"
    assert "no-such-endpoint" in "\n".join(seen)  # the failures did happen and were reported


class SimpleController:
    def __init__(self):
        self.notices: list[str] = []


def s3_client():
    import boto3

    return boto3.client("s3")


def test_serving_process_logs_carry_no_credentials(marked_aws, tmp_path):
    """The container app, started like SageMaker does, reading a missing s3:// input: its whole log is clean."""
    from studio.testing.servers import ServingProcess

    env = {**MARKERS, "AWS_ENDPOINT_URL": marked_aws.url, "AWS_DEFAULT_REGION": "us-east-1"}
    with ServingProcess(model="demo", env=env) as serving:
        response = requests.post(
            f"{serving.url}/invocations", json={"prompt": "x", "input_image": "s3://no-bucket/in.png"}, timeout=60
        )
        assert response.status_code == 400 and response.json()["field"] == "input_image"
        assert not leaks(response.text)
        log = serving.output()
    assert "no-bucket" in log or "bad request" in log, log[-2000:]
    assert not leaks(log), "credentials in the serving log"


def test_studio_process_output_carries_no_credentials(marked_aws, tmp_path):
    """`python app.py --backend sagemaker` in a real process: stdout and stderr are clean."""
    env = {**os.environ, **MARKERS, "AWS_ENDPOINT_URL": marked_aws.url, "GRADIO_ANALYTICS_ENABLED": "False"}
    done = subprocess.run(
        [sys.executable, "app.py", "--backend", "sagemaker", "--endpoint", "missing-endpoint", "--port",
         str(free_port()), "--outputs", str(tmp_path / "out")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2 and "missing-endpoint" in done.stderr and "Traceback" not in done.stderr
    assert not leaks(done.stdout + done.stderr)


def test_credentials_in_a_url_are_redacted_in_status():
    """An HTTP backend URL with user:password shows without the password wherever the studio names it."""
    from studio import remote
    from studio.types import GenerationRequest

    engine = remote.http_engine(f"http://admin:{URL_PASSWORD}@127.0.0.1:9/")
    shown = [engine.name, str(engine.status())]
    with pytest.raises(Exception) as caught:  # noqa: B017 (nothing listens there: any error, but a clean one)
        engine.generate(GenerationRequest(prompt="x", width=64, height=64, steps=2))
    shown.append(str(caught.value))
    assert not any(leaks(text) for text in shown), shown
