"""Who can drive the A1111 API: with --auth only callers with the credentials (HTTP Basic, 401 otherwise and nothing
runs); never a web page of another origin (the CSRF that CORS alone does not stop); with --no-api nobody."""

from __future__ import annotations

import pytest
import requests

from studio.testing.browser import start_studio

webuiapi = pytest.importorskip("webuiapi")

BODY = {"prompt": "x", "steps": 2, "width": 64, "height": 64, "seed": 1, "save_images": True}


@pytest.fixture(scope="module")
def locked(tmp_path_factory):
    studio = start_studio(tmp_path_factory.mktemp("locked-api"), "--auth", "alice:s3cret")
    yield studio
    studio.close()


@pytest.fixture(scope="module")
def open_studio(tmp_path_factory):
    studio = start_studio(tmp_path_factory.mktemp("open-api"))
    yield studio
    studio.close()


def port_of(studio) -> int:
    return int(studio.url.rstrip("/").rsplit(":", 1)[1])


CALLS = [
    ("GET", "options", None),
    ("GET", "sd-models", None),
    ("GET", "progress", None),
    ("POST", "txt2img", BODY),
    ("POST", "img2img", {"init_images": ["x"]}),
    ("POST", "options", {"CLIP_stop_at_last_layers": 2}),
    ("POST", "interrupt", None),
    ("POST", "png-info", {"image": ""}),
]


def test_auth_without_credentials_is_401_and_nothing_runs(locked):
    saved = len(locked.controller.store.history())
    for method, path, body in CALLS:
        for auth in (None, ("alice", "wrong"), ("mallory", "s3cret")):
            response = requests.request(method, f"{locked.url}sdapi/v1/{path}", json=body, auth=auth, timeout=30)
            assert response.status_code == 401, (path, auth, response.status_code, response.text[:200])
            assert response.headers.get("www-authenticate", "").lower().startswith("basic")
    assert len(locked.controller.store.history()) == saved
    assert locked.controller.jobs.progress()["state"]["job_count"] == 0
    options = requests.get(f"{locked.url}sdapi/v1/options", auth=("alice", "s3cret"), timeout=30).json()
    assert options["CLIP_stop_at_last_layers"] == 1  # the refused POST changed nothing


def test_auth_with_credentials_is_200(locked):
    api = webuiapi.WebUIApi(host="127.0.0.1", port=port_of(locked), username="alice", password="s3cret", steps=2)
    result = api.txt2img(prompt="x", width=64, height=64, seed=3, save_images=True)
    assert result.info["all_seeds"] == [3]
    assert requests.post(f"{locked.url}sdapi/v1/txt2img", json=BODY, auth=("alice", "s3cret"), timeout=60).ok


def test_a_foreign_web_page_cannot_drive_the_api(open_studio):
    url = f"{open_studio.url}sdapi/v1"
    foreign = {"Origin": "https://evil.example"}
    preflight = requests.options(
        f"{url}/txt2img",
        headers={**foreign, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"},
        timeout=10,
    )
    assert "access-control-allow-origin" not in {k.lower() for k in preflight.headers}
    saved = len(open_studio.controller.store.history())
    # What a page can send without a preflight: a text/plain POST (and bodyless POSTs, GETs).
    simple = requests.post(f"{url}/txt2img", data=str(BODY).replace("'", '"').replace("True", "true"),
                           headers={**foreign, "Content-Type": "text/plain"}, timeout=30)  # fmt: skip
    assert simple.status_code == 403
    for method, path in (("POST", "interrupt"), ("POST", "skip"), ("GET", "progress"), ("GET", "options")):
        assert requests.request(method, f"{url}/{path}", headers=foreign, timeout=10).status_code == 403, path
    assert len(open_studio.controller.store.history()) == saved
    # The studio's own page (same origin) and non-browser clients (no Origin) are served.
    same = requests.post(f"{url}/txt2img", json=BODY, headers={"Origin": open_studio.url.rstrip("/")}, timeout=60)
    assert same.status_code == 200 and len(open_studio.controller.store.history()) == saved + 1
    local = requests.options(f"{url}/txt2img", headers={"Origin": open_studio.url.rstrip("/"),
                             "Access-Control-Request-Method": "POST"}, timeout=10)  # fmt: skip
    assert local.headers.get("access-control-allow-origin") == open_studio.url.rstrip("/")


@pytest.mark.parametrize(("args", "environ"), [(("--no-api",), {}), ((), {"STUDIO_API": "false"})])
def test_no_api_turns_it_off(tmp_path, args, environ):
    studio = start_studio(tmp_path, *args, environ=environ)
    try:
        assert requests.get(f"{studio.url}sdapi/v1/options", timeout=10).status_code == 404
        assert requests.get(studio.url, timeout=10).status_code == 200  # the UI is still there
    finally:
        studio.close()
