"""The A1111 API on the serving app (`python -m studio.serving`), its OpenAPI description, and a bounded
schemathesis run over /sdapi/v1 and /invocations that must find no 5xx (with small limits, so that the valid
requests it generates are cheap to run on the demo model)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import requests

from studio.config import EngineSettings, ServingSettings
from studio.engines.local import LocalEngine
from studio.serving.app import create_app
from studio.testing.servers import UvicornThread, single_threaded_torch
from studio.types import Limits

webuiapi = pytest.importorskip("webuiapi")
schemathesis = pytest.importorskip("schemathesis")

# min_cfg_scale 1.5: the demo's tiny UNet (32 channels in 32 norm groups) cannot run 8x8 without classifier-free
# guidance (GroupNorm over a single value: a 500 the first fuzz run found); real checkpoints have 10+ channels a group.
SMALL = Limits(max_width=64, max_height=64, max_pixels=64 * 64, max_steps=2, max_count=2, max_prompt_chars=300,
               min_cfg_scale=1.5)  # fmt: skip
FUZZ_EXAMPLES = 100  # per operation and mode (fewer when the schema allows fewer); a call takes ms to ~0.1 s


class NoS3:
    """An S3 client that is never reached over the network: any s3:// the fuzzer names fails here, not on AWS."""

    def __getattr__(self, name):
        raise PermissionError("S3 is not available in this test")


@pytest.fixture(scope="module")
def serving(tmp_path_factory):
    models = tmp_path_factory.mktemp("serving-models")
    settings = ServingSettings(engine=EngineSettings(model="demo", models_dir=models, device="cpu", limits=SMALL))
    with single_threaded_torch():
        engine = LocalEngine("demo", device="cpu", models_dir=models, limits=SMALL)
        engine.load()
        app = create_app(engine, settings=settings, load=False, s3_client=lambda: NoS3())
        with UvicornThread(app) as server:
            yield server


def test_webuiapi_against_the_serving_app(serving):
    port = int(serving.url.rsplit(":", 1)[1])
    api = webuiapi.WebUIApi(host="127.0.0.1", port=port, steps=2)
    result = api.txt2img(prompt="a fox", seed=8, width=64, height=64, batch_size=2, save_images=True)
    assert result.info["all_seeds"] == [8, 9] and len(result.images) == 2
    assert result.info["warnings"] == ["save_images: this server keeps no outputs; the images are only returned"]
    assert api.get_options()["sd_model_checkpoint"].startswith("demo [")
    assert api.get_progress()["state"]["job_count"] == 0
    too_big = requests.post(f"{serving.url}/sdapi/v1/txt2img", json={"prompt": "x", "steps": 3}, timeout=30)
    assert too_big.status_code == 422 and too_big.json()["detail"][0]["loc"] == ["body", "steps"]


def test_openapi_describes_invocations_and_sdapi(serving):
    schema = requests.get(f"{serving.url}/openapi.json", timeout=30).json()
    invocations = schema["paths"]["/invocations"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"prompt", "steps", "width", "input_image", "mask_image", "inpaint_only_masked", "masked_content"} <= set(
        invocations["properties"]
    )
    # This deployment's limits (steps <= 2, 64x64) are below the defaults: those fields must be given here.
    assert invocations["required"] == ["prompt", "steps", "width", "height"]
    assert invocations["properties"]["steps"]["maximum"] == 2
    assert "Euler a" in invocations["properties"]["sampler"]["enum"]
    txt2img = schema["paths"]["/sdapi/v1/txt2img"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert txt2img["properties"]["n_iter"]["maximum"] == 2 and "override_settings" in txt2img["properties"]
    assert "default" not in txt2img["properties"]["steps"] and "steps" in txt2img["required"]
    assert "/sdapi/v1/progress" in schema["paths"] and "/ping" in schema["paths"]


def test_fuzzing_finds_no_server_error(serving):
    """Every operation of /openapi.json (A1111's and /invocations), with schema-valid and schema-invalid inputs
    (schemathesis' generators, derandomized so CI repeats the same run): no answer is a 5xx, the app stays healthy,
    and a 200 from a generation endpoint carries images."""
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{serving.url}/openapi.json")
    statuses: Counter[int] = Counter()
    generated: Counter[str] = Counter()  # 200s of the generation endpoints
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in GenerationMode:
            before = statuses[200]
            _fuzz(operation, mode, serving.url, statuses, failures)
            if operation.path.endswith(("txt2img", "img2img", "invocations")):
                generated[operation.path] += statuses[200] - before
    print(f"schemathesis: {sum(statuses.values())} calls, statuses {dict(sorted(statuses.items()))}, {dict(generated)}")
    assert not failures, failures[:5]
    assert generated["/sdapi/v1/txt2img"] > 0 and generated["/invocations"] > 0
    assert statuses[422] > 0 and statuses[400] > 0
    assert requests.get(f"{serving.url}/ping", timeout=30).status_code == 200


def _fuzz(operation, mode, url: str, statuses: Counter[int], failures: list[str]) -> None:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        response = case.call(base_url=url, timeout=60)
        statuses[response.status_code] += 1
        if response.status_code >= 500 or not _answer_ok(case, response):
            failures.append(f"{case.method} {case.path} {mode.value}: {response.status_code} "
                            f"{response.text[:300]} <- {str(case.body)[:300]}")  # fmt: skip

    try:
        run()
    except Unsatisfiable:  # no invalid input exists for an operation without parameters
        assert mode is GenerationMode.NEGATIVE, operation.label


def _answer_ok(case, response) -> bool:
    """A 200 from a generation endpoint has images (or, for A1111's, a JSON info string)."""
    if response.status_code != 200:
        return True
    if case.path == "/invocations":
        return bool(response.json().get("images"))
    if case.path.endswith(("/txt2img", "/img2img")):
        return isinstance(json.loads(response.json()["info"]), dict)
    return True
