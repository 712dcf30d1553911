"""Hosting the studio the ways its users do (issue 11, parts 1-2).

- Behind a SageMaker notebook's Jupyter proxy: a real Jupyter Server with jupyter-server-proxy (what notebook
  instances run) in front of the studio, which finds its root path in a notebook instance's metadata file. Headless
  Chromium opens /proxy/PORT/, generates an image, downloads it from the gallery and sees it in History.
- TLS: --tls-cert/--tls-key serve HTTPS (a self-signed certificate for 127.0.0.1, verified by the client).
- --share offline (this machine has no internet): a clear error and exit 2 within seconds, no traceback, no hang.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from studio.testing.browser import (
    REPO,
    RESULTS,
    VIEWPORT,
    free_port,
    generate,
    open_studio,
    open_tab,
    read_json,
    set_number,
    set_seed,
    start_studio,
    thumbnails,
    track_calls,
    type_prompt,
)
from studio.testing.servers import wait_for

NOTEBOOK_METADATA = {
    "ResourceArn": "arn:aws:sagemaker:eu-west-1:123456789012:notebook-instance/sd-notebook",
    "ResourceName": "sd-notebook",
}


# ---- Jupyter Server + jupyter-server-proxy in front of the studio -----------------------------------------------
@contextlib.contextmanager
def jupyter_server(root: Path) -> Iterator[str]:
    """`jupyter server` with jupyter-server-proxy on a free 127.0.0.1 port, no token (a notebook instance's Jupyter
    sits behind AWS's own sign-in); its config, data and runtime folders under `root`. Yields its base URL."""
    pytest.importorskip("jupyter_server_proxy")
    port = free_port()
    env = {
        **os.environ,
        **{f"JUPYTER_{kind}_DIR": str(root / kind.lower()) for kind in ("CONFIG", "DATA", "RUNTIME")},
    }
    log = open(root / "jupyter.log", "wb")  # noqa: SIM115 (closed below)
    command = [
        sys.executable, "-m", "jupyter_server", "--allow-root", "--no-browser", "--ip", "127.0.0.1",
        "--port", str(port), "--IdentityProvider.token=", "--ServerApp.password=", f"--ServerApp.root_dir={root}",
    ]
    process = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/api/status", timeout=60, alive=lambda: process.poll() is None)
        yield url
    except Exception:
        print((root / "jupyter.log").read_text(errors="replace")[-3000:])
        raise
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def proxied(tmp_path_factory):
    """The studio on a free port, started as on a notebook instance (its metadata file says so), behind Jupyter."""
    root = tmp_path_factory.mktemp("notebook")
    metadata = root / "resource-metadata.json"
    metadata.write_text(json.dumps(NOTEBOOK_METADATA))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SAGEMAKER_METADATA_FILE", str(metadata))
        studio = start_studio(root)
    port = int(studio.url.rstrip("/").rsplit(":", 1)[1])
    try:
        with jupyter_server(root) as jupyter:
            yield studio, f"{jupyter}/proxy/{port}/", port
    finally:
        studio.close()


def pixels(data: bytes | Path) -> np.ndarray:
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    with Image.open(source) as image:
        return np.asarray(image.convert("RGB")).astype(int)


@pytest.mark.browser
def test_generate_download_and_history_through_the_jupyter_proxy(proxied, browser):
    studio, url, port = proxied
    assert studio.blocks.root_path == f"/proxy/{port}"  # found in the notebook instance's metadata file
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    context.set_default_timeout(30_000)
    page = context.new_page()
    track_calls(page)
    failed: list[str] = []
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        _generate_download_and_see_history(page, studio, url)
        assert not failed, failed  # every page, script, stylesheet, event call and image came through the proxy
        assert not errors, errors
    except Exception:
        RESULTS.mkdir(exist_ok=True)
        page.screenshot(path=str(RESULTS / "proxy-failure.png"), full_page=True)
        raise
    finally:
        context.close()


def _generate_download_and_see_history(page, studio, url: str) -> None:
    open_studio(page, url)
    # Styled (gradio's stylesheets came through the proxy) and no component shows "Error".
    assert page.evaluate("document.styleSheets.length") > 0
    assert page.locator("#txt2img-generate").evaluate("e => getComputedStyle(e).backgroundColor") != "rgba(0, 0, 0, 0)"
    assert page.locator("[data-testid=status-tracker] .error").count() == 0
    panel = page.locator("#tab-txt2img")
    type_prompt(page, "txt2img", "a lighthouse behind a proxy")
    for label, value in (("Width", 64), ("Height", 64), ("Steps", 3)):
        set_number(panel, label, value)
    set_seed(panel, 4242)
    generate(page, "txt2img", expect_images=1)
    saved = Path(read_json(page, "txt2img-info")["paths"][0])
    assert saved.is_file() and saved.is_relative_to(studio.outputs.resolve())

    shown = thumbnails(page, "txt2img").first
    src = shown.get_attribute("src")
    assert src.startswith(url), src  # file URLs carry the proxy's prefix
    response = page.request.get(src)
    assert response.ok, response.status
    assert np.array_equal(pixels(response.body()), pixels(saved))

    # Gallery download: the preview's download button saves the same PNG.
    shown.click()
    download_button = page.locator("#txt2img-gallery").get_by_role("button", name="Download")
    with page.expect_download() as caught:
        download_button.first.click()
    downloaded = Path(caught.value.path())
    assert np.array_equal(pixels(downloaded), pixels(saved))

    # History: the image is listed and loads through the proxy.
    open_tab(page, "History")
    listed = page.locator("#history-gallery img").first
    listed.wait_for(state="visible")
    assert listed.get_attribute("src").startswith(url)
    page.wait_for_function("(e) => e.complete && e.naturalWidth === 64", arg=listed.element_handle(), timeout=20_000)


def test_the_studio_logs_the_notebook_url(tmp_path, caplog):
    """On a notebook instance the start-up log says which URL to open."""
    metadata = tmp_path / "resource-metadata.json"
    metadata.write_text(json.dumps(NOTEBOOK_METADATA))
    with pytest.MonkeyPatch.context() as patch, caplog.at_level("INFO", logger="studio.hosting"):
        patch.setenv("SAGEMAKER_METADATA_FILE", str(metadata))
        studio = start_studio(tmp_path)
    try:
        port = studio.url.rstrip("/").rsplit(":", 1)[1]
        expected = f"https://sd-notebook.notebook.eu-west-1.sagemaker.aws/proxy/{port}/"
        assert any(expected in record.getMessage() for record in caplog.records), caplog.text
        # Without the proxy the page itself still answers on 127.0.0.1 (under the prefix-less path).
        assert requests.get(studio.url + "config", timeout=10).ok
    finally:
        studio.close()


# ---- TLS ---------------------------------------------------------------------------------------------------------
def self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", str(key),
         "-out", str(cert), "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def test_tls_serves_https(tmp_path):
    if not Path("/usr/bin/openssl").exists():
        pytest.skip("openssl not installed")
    cert, key = self_signed(tmp_path)
    studio = start_studio(tmp_path, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        https = studio.url.replace("http://", "https://")
        page = requests.get(https, verify=str(cert), timeout=10)  # the certificate is verified, not skipped
        assert page.ok and "gradio" in page.text.lower()
        assert requests.get(https + "config", verify=str(cert), timeout=10).json()["version"]
        with pytest.raises(requests.ConnectionError):  # plain HTTP is not served on that port
            requests.get(studio.url + "config", timeout=5)
    finally:
        studio.close()


# ---- --share without the internet ------------------------------------------------------------------------------------
def test_share_offline_fails_fast_with_a_clear_message():
    """This machine has no internet: that is the offline case. The studio must refuse within seconds."""
    from studio.config import ConfigError
    from studio.hosting import check_share_reachable

    try:
        check_share_reachable(timeout=10)
    except ConfigError:
        pass
    else:
        pytest.skip("this machine reaches gradio's share service: not the offline case")
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "STUDIO_CHECK_ENDPOINTS": "false"}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "app.py", "--share", "--auth", "alice:s3cret", "--port", str(port), "--model", "demo"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=90,
    )
    seconds = time.monotonic() - started
    assert done.returncode == 2, done.stderr[-3000:]
    assert "--share needs the internet" in done.stderr and "api.gradio.app" in done.stderr, done.stderr[-3000:]
    assert "--host 0.0.0.0 --auth" in done.stderr  # says what to do instead
    assert "Traceback" not in done.stderr
    assert seconds < 45, seconds
    with pytest.raises(OSError):  # nothing is listening
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
