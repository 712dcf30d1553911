"""`--backend lambda --function NAME`: the remote engine over lambda.invoke and over a SigV4-signed function URL,
through the Lambda stand-in (studio.testing.lambda_standin) running the real handler (studio.serving.aws_lambda):
the local engine's pixels, the handler's 4xx as RequestError naming the field, throttling retried with backoff,
function errors with Lambda's words, IAM auth on the URL, S3-only answers read back from S3 (moto)."""

from __future__ import annotations

import boto3
import pytest

from studio import aws as aws_module
from studio import engines
from studio.config import EngineSettings, ServingSettings, load_settings
from studio.engine import EngineError, EngineNotReady
from studio.remote import LambdaFunctionUrl, LambdaInvoke, RemoteEngine, lambda_engine
from studio.serving.aws_lambda import LambdaApp
from studio.testing.fakes import FakeEngine
from studio.testing.lambda_standin import LambdaStandin
from studio.testing.servers import single_threaded_torch
from studio.types import GenerationRequest, RequestError

REQUEST = GenerationRequest(prompt="a lighthouse at dusk", width=64, height=64, steps=3, seed=42, count=2)


@pytest.fixture(scope="module")
def local_engine():
    with single_threaded_torch():
        engine = engines.build(EngineSettings(model="demo", device="cpu"))
        engine.load()
        yield engine


@pytest.fixture(scope="module")
def standin(local_engine):
    """The stand-in with "sd" (the handler on the demo model) and "fake" (the handler on a FakeEngine)."""
    with LambdaStandin() as server:
        server.add_function("sd", LambdaApp(local_engine, ServingSettings()).start(wait=60), memory=3008)
        server.add_function("fake", LambdaApp(FakeEngine(loaded=True), ServingSettings()).start(wait=5))
        yield server


@pytest.fixture
def lambda_env(standin, monkeypatch):
    """boto3's lambda client pointed at the stand-in (AWS_ENDPOINT_URL_LAMBDA) with the stand-in's credentials."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", standin.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    return standin


def no_sleep(engine: RemoteEngine) -> RemoteEngine:
    engine.transport.sleep = lambda seconds: None
    return engine


def test_invoke_gives_the_local_engines_pixels(lambda_env, local_engine):
    engine = engines.build(EngineSettings(backend="lambda", function="sd"))
    assert isinstance(engine.transport, LambdaInvoke)
    engine.load()
    status = engine.status()
    assert status.loaded and status.backend == "lambda" and status.details["memory"] == "3008 MB"
    result = engine.generate(REQUEST)
    expected = local_engine.generate(REQUEST)
    assert result.backend == "lambda" and result.seeds == [42, 43]
    assert [i.tobytes() for i in result.images] == [i.tobytes() for i in expected.images]
    event = lambda_env.functions["sd"].events[-1]
    assert event["prompt"] == REQUEST.prompt and "requestContext" not in event  # a direct invocation


def test_the_studio_setting_reaches_the_lambda_engine(lambda_env):
    settings = load_settings(["--backend", "lambda", "--function", "fake"], environ={})
    engine = engines.build(settings.engine)
    assert engine.backend == "lambda" and engine.name == "fake"
    assert engine.generate(REQUEST.replace(count=1)).seeds == [42]


def test_the_handlers_4xx_is_a_request_error_naming_the_field(lambda_env):
    transport = lambda_engine("fake").transport
    with pytest.raises(RequestError) as error:
        transport.invoke({"prompt": "x", "stpes": 3}, total=1, on_progress=None, cancel=None)
    assert error.value.field == "stpes" and "unknown field" in str(error.value)


def test_throttling_is_retried_with_backoff_then_reported(lambda_env):
    engine = no_sleep(lambda_engine("fake"))
    calls = lambda_env.functions["fake"].calls
    lambda_env.inject("fake", "TooManyRequestsException", times=2)
    assert engine.generate(REQUEST).seeds == [42, 43]
    assert lambda_env.functions["fake"].calls == calls + 3
    lambda_env.inject("fake", "TooManyRequestsException", times=5)
    with pytest.raises(EngineError, match=r"throttling requests \(TooManyRequestsException\) after 5 attempts"):
        engine.generate(REQUEST)


def test_function_errors_carry_lambdas_words(lambda_env):
    def crash(event, context):
        raise MemoryError("Runtime exited with error: signal: killed")

    def huge(event, context):
        return {"images": ["A" * (7 * 1024 * 1024)]}

    lambda_env.add_function("crash", crash)
    lambda_env.add_function("huge", huge)
    with pytest.raises(EngineError, match=r"crash: the function failed \(MemoryError\): Runtime exited"):
        lambda_engine("crash").generate(REQUEST)
    with pytest.raises(EngineError, match=r"Function.ResponseSizeTooLarge.*s3_output"):
        lambda_engine("huge").generate(REQUEST)
    with pytest.raises(EngineError, match="ResourceNotFoundException: Function not found"):
        lambda_engine("missing").load()


def test_a_not_ready_function_is_engine_not_ready(lambda_env):
    lambda_env.add_function("loading", LambdaApp(FakeEngine(load_error="weights are corrupt"), ServingSettings()))
    with pytest.raises(EngineNotReady, match="weights are corrupt"):
        lambda_engine("loading").generate(REQUEST)


def test_requests_over_6_mb_are_refused_before_sending(lambda_env):
    calls = lambda_env.functions["fake"].calls
    with pytest.raises(RequestError, match="AWS Lambda accepts at most 6.3 MB") as error:
        lambda_engine("fake").transport.invoke(
            {"prompt": "x", "input_image": "A" * (7 * 1024 * 1024)}, total=1, on_progress=None, cancel=None
        )
    assert error.value.field == "input_image" and lambda_env.functions["fake"].calls == calls


def test_function_url_with_iam_auth_is_signed_with_sigv4(lambda_env, local_engine):
    url = lambda_env.function_url("sd")
    engine = engines.build(EngineSettings(backend="lambda", function=url))
    assert isinstance(engine.transport, LambdaFunctionUrl)
    engine.load()
    assert engine.status().loaded and engine.status().details["server_model"] == "demo"
    result = engine.generate(REQUEST)
    assert [i.tobytes() for i in result.images] == [i.tobytes() for i in local_engine.generate(REQUEST).images]
    event = lambda_env.functions["sd"].events[-1]
    assert event["version"] == "2.0" and event["requestContext"]["http"]["method"] == "POST"
    assert event["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=testing/")
    assert "/us-east-1/lambda/aws4_request" in event["headers"]["authorization"]


def test_function_url_refuses_unsigned_and_wrongly_signed_requests(lambda_env, monkeypatch):
    url = lambda_env.function_url("fake")
    with pytest.raises(EngineError, match=r"forbidden \(403\).*lambda:InvokeFunctionUrl"):
        lambda_engine(url, sign_url=False).generate(REQUEST)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(EngineError, match="forbidden"):
        lambda_engine(url).generate(REQUEST)


def test_function_url_errors_and_public_urls(lambda_env):
    lambda_env.add_function("public", LambdaApp(FakeEngine(loaded=True), ServingSettings()).start(), auth="NONE")
    url = lambda_env.function_url("public")
    assert lambda_engine(url, sign_url=False).generate(REQUEST).seeds == [42, 43]
    with pytest.raises(RequestError) as error:
        lambda_engine(url, sign_url=False).transport.invoke(
            {"prompt": "x", "steps": 0}, total=1, on_progress=None, cancel=None
        )
    assert error.value.field == "steps"


def test_s3_only_answers_are_read_from_s3(lambda_env, aws, local_engine):
    """Over the 6 MB limit (here: 4 KB), an answer with S3 output carries URIs only; the engine reads the images."""
    s3 = boto3.client("s3", endpoint_url=aws, region_name="us-east-1")
    s3.create_bucket(Bucket="lambda-out")
    app = LambdaApp(local_engine, ServingSettings(s3_output="s3://lambda-out/images/"), s3_client=s3).start()
    app.max_response_bytes = 4000  # two 64x64 noise PNGs are ~25 KB inline
    lambda_env.add_function("to-s3", app)
    result = lambda_engine("to-s3", session=aws_module.new_session("us-east-1")).generate(REQUEST)
    expected = local_engine.generate(REQUEST)
    assert [i.tobytes() for i in result.images] == [i.tobytes() for i in expected.images]
    assert any("S3 only" in w for w in result.warnings)
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="lambda-out")["Contents"])
    assert len(keys) == 2 and all(k.startswith("images/") for k in keys)
