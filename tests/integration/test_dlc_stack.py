"""The package `deploy` uploads, run as an endpoint runs it: the SageMaker PyTorch DLC's serving stack
(sagemaker-pytorch-inference + TorchServe + Java 17, started like `serve`) on the unpacked model.tar.gz of the demo
model, with vendored wheels and PIP_NO_INDEX=1 (no index at all), in a venv that starts without our requirements.

Every dialect generates; bad input answers the serving app's JSON (400, application/json, no traceback); an
unsupported Accept is declined before generating; a model that cannot load makes `serve` exit within seconds
(instead of /ping answering 200 for ~5 minutes). studio.testing.dlc explains the set-up.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import sys
import tarfile

import pytest
from PIL import Image

from studio.testing import dlc
from studio.testing.servers import REPO

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not dlc.java_available(), reason="TorchServe needs Java 17 (.ci/run installs it)"),
]

SMALL = {"width": 64, "height": 64, "seed": 5}
CACHE = REPO / ".cache"


def _png(text: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(text)))
    image.load()
    return image


ENV = {"PIP_NO_INDEX": "1", "STUDIO_CACHE": str(CACHE), "PIP_NO_COMPILE": "1"}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(thin venv, the unpacked package folder): the demo model packaged with vendored wheels for this Python, and
    a fresh environment over the DLC stand-in (the requirements get installed by the first `serve`)."""
    from studio.deploy import DeployPlan, package_model

    work = tmp_path_factory.mktemp("dlc")
    base = dlc.base_venv(CACHE)
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    plan = DeployPlan(name="stack", model="demo", vendor_wheels=True, wheels_python=python)
    tarball = package_model(plan, work / "m.tgz")
    return dlc.thin_venv(base, work / "venv"), dlc.unpack(tarball, work / "endpoint")


@pytest.fixture(scope="module")
def stack(prepared):
    """(server, its thin venv, the package folder): the package served by the DLC stack with no package index.
    (One TorchServe at a time: the toolkit refuses to start beside another, so the broken-model test runs first.)"""
    venv, model = prepared
    with dlc.served(venv, model.parent, env=ENV) as server:
        server.wait_ping(600)
        server.wait_first_image({"prompt": "warm-up", "steps": 1, **SMALL}, 600)
        yield server, venv, model


def test_a_model_that_cannot_load_stops_serve_within_seconds(prepared, tmp_path):
    """Without this, TorchServe answers /ping 200 for ~5 minutes while it retries the worker, and requests hang.
    (This first `serve` also installs the vendored requirements, with no index.)"""
    venv, model = prepared
    broken = tmp_path / "endpoint" / "model"
    shutil.copytree(model / "code", broken / "code", symlinks=True)
    (broken / "model_index.json").write_text("{ this is not json")
    with dlc.served(venv, tmp_path / "endpoint", env=ENV) as server:
        code = server.wait_exit(300)
        output = server.output()
    assert code is not None, output[-3000:]
    installed = next(line for line in output.splitlines() if line.startswith("Successfully installed"))
    assert "diffusers-0.42.1" in installed and "Looking in indexes" not in output  # from the wheels, no index
    assert "SD-STUDIO-MODEL-LOAD-FAILED: the model could not be loaded" in output
    assert "stopping the model server" in output
    assert "Retry worker" not in output  # stopped at the first failure, not retried for minutes


def test_the_vendored_package_installs_with_no_index_and_without_openvino(stack):
    server, venv, model = stack
    requirements = (model / "code" / "requirements.txt").read_text()
    assert requirements.splitlines()[1:3] == ["--no-index", "--find-links wheels"]
    assert "diffusers==0.42.1" in requirements and "openvino" not in requirements
    wheels = sorted(p.name for p in (model / "code" / "wheels").glob("*.whl"))
    assert any(w.startswith("diffusers-0.42.1-") for w in wheels) and not any("openvino" in w for w in wheels)
    assert not any(w.startswith(("torch-", "nvidia")) for w in wheels)  # the DLC has torch
    assert "Looking in indexes" not in server.output()
    site = next((venv / "lib").glob("python*/site-packages"))
    assert (site / "diffusers").is_dir()  # installed into the fresh environment, from the wheels


def test_every_dialect_generates_through_the_dlc(stack):
    server, _, _ = stack
    cases = [
        ({"prompt": "a fox", "steps": 2, **SMALL}, "native", "images", 1),
        ({"prompt": "a fox", "steps": 2, "sampler": "euler_a", "count": 2, **SMALL}, "quick_kit", "images", 2),
        (
            {"prompt": ["a panda on a sofa", "an astronaut on a horse"], "num_images_per_prompt": 1,
             "num_inference_steps": 2, **SMALL},
            "hf_dlc", "generated_images", 2,
        ),
        ({"prompt": "a fox", "num_inference_steps": 2, "results": 1, **SMALL}, "byoc", "images", 1),
        # BYOC's payload without `results`: only keys every dialect sends -> native
        ({"prompt": "a fox", "num_inference_steps": 2, "guidance_scale": 7, **SMALL}, "native", "images", 1),
    ]  # fmt: skip
    for payload, dialect, key, count in cases:
        response = server.invoke(payload)
        assert response.status_code == 200, (payload, response.text[:500])
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        assert body["dialect"] == dialect and len(body[key]) == count, payload
        assert all(_png(text).size == (64, 64) for text in body[key])
    hf = server.invoke(cases[2][0]).json()
    assert hf["seeds"] == [5, 6]
    assert [t.split("\n")[0] for t in hf["infotexts"]] == ["a panda on a sofa", "an astronaut on a horse"]


def test_bad_input_is_the_serving_apps_json_without_a_traceback(stack):
    server, _, _ = stack
    for body, headers, field in (
        ({"prompt": "x", "width": 100}, {}, "width"),
        (b'{"prompt": ', {}, "body"),
        ({"prompt": "x", "steps": 2, "stpes": 3}, {}, "stpes"),
        ({"prompt": ["a"] * 9, "count": 2}, {}, "count"),
        ({"prompt": "x", "steps": 2, **SMALL}, {"Accept": "image/png"}, "accept"),  # declined before generating
    ):
        response = server.invoke(body, headers=headers)
        assert response.status_code == 400, (body, response.text[:300])
        assert response.headers["content-type"].startswith("application/json")
        answer = response.json()
        assert answer["field"] == field and "Traceback" not in response.text
    # The one difference the toolkit forces on the body: it decodes JSON as UTF-8 before any handler runs.
    raw = server.invoke(b'{"prompt": "\xff\xfe"}')
    assert raw.status_code == 500 and "Traceback" in raw.text  # documented in the README and toolkit.py


def test_the_package_layout_matches_the_toolkit(stack):
    _, _, model = stack
    assert (model / "code" / "inference.py").read_text() == (REPO / "studio/serving/toolkit.py").read_text()
    assert json.loads((model / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    assert not list(model.rglob("testing/*.py"))
    with tarfile.open(model.parent.parent / "m.tgz") as tar:
        assert "code/requirements.txt" in tar.getnames()
