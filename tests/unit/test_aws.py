"""studio.aws: the one AWS edge — error classification of real botocore error shapes, failure messages without
secrets, URL redaction, S3 URIs, and clients (cached per session, pointed at moto by AWS_ENDPOINT_URL)."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProxyConnectionError,
    ReadTimeoutError,
)

from studio import aws
from studio.testing.servers import REPO
from studio.types import RequestError


def client_error(code: str, message: str, operation: str, status: int = 400, **extra: str) -> ClientError:
    """A ClientError shaped as botocore parses it from the service's response."""
    response = {
        "Error": {"Code": code, "Message": message, **extra},
        "ResponseMetadata": {"HTTPStatusCode": status, "RequestId": "0123"},
    }
    return ClientError(response, operation)


NOT_FOUND = {
    # S3 HEAD requests have no body: botocore makes the status code the error code.
    "s3 head_object 404": client_error("404", "Not Found", "HeadObject", 404),
    "s3 head_bucket 404": client_error("404", "Not Found", "HeadBucket", 404),
    "s3 get_object NoSuchKey": client_error(
        "NoSuchKey", "The specified key does not exist.", "GetObject", 404, Key="a/b.png"
    ),
    "s3 NoSuchBucket": client_error(
        "NoSuchBucket", "The specified bucket does not exist", "GetObject", 404, BucketName="b-1"
    ),
    "s3 NotFound": client_error("NotFound", "Not Found", "HeadObject", 404),
    "sagemaker describe_endpoint": client_error(
        "ValidationException",
        'Could not find endpoint "arn:aws:sagemaker:us-east-1:123456789012:endpoint/sd-x".',
        "DescribeEndpoint",
    ),
    "sagemaker describe_model": client_error(
        "ValidationException", 'Could not find model "arn:aws:sagemaker:us-east-1:1:model/m".', "DescribeModel"
    ),
    "autoscaling deregister": client_error(
        "ObjectNotFoundException",
        "No scalable target registered for service namespace: sagemaker, resource ID: endpoint/x/variant/AllTraffic",
        "DeregisterScalableTarget",
    ),
    "iam get_role": client_error("NoSuchEntity", "The role with name X cannot be found.", "GetRole", 404),
    "resource not found": client_error("ResourceNotFound", "Resource not found", "DescribeX"),
}

THROTTLED = {
    "sagemaker ThrottlingException": client_error("ThrottlingException", "Rate exceeded", "InvokeEndpoint"),
    "iam Throttling": client_error("Throttling", "Rate exceeded", "GetRole"),
    "s3 SlowDown": client_error("SlowDown", "Please reduce your request rate.", "PutObject", 503),
    "TooManyRequestsException": client_error("TooManyRequestsException", "Too many requests", "X"),
    "ec2 RequestLimitExceeded": client_error("RequestLimitExceeded", "Request limit exceeded.", "X"),
}


@pytest.mark.parametrize("exc", NOT_FOUND.values(), ids=NOT_FOUND.keys())
def test_not_found_in_every_spelling(exc):
    assert aws.is_not_found(exc)
    assert not aws.is_throttling(exc) and not aws.is_access_denied(exc)


@pytest.mark.parametrize("exc", THROTTLED.values(), ids=THROTTLED.keys())
def test_throttling_codes(exc):
    assert aws.is_throttling(exc)
    assert not aws.is_not_found(exc)


@pytest.mark.parametrize(
    "exc",
    [
        client_error(
            "ValidationException",
            "1 validation error detected: Value 'x_y' at 'endpointName' failed to satisfy constraint",
            "DescribeEndpoint",
        ),
        client_error("AccessDenied", "Access Denied", "GetObject", 403),
        client_error("InternalFailure", "An internal error occurred", "InvokeEndpoint", 500),
        ValueError("Could not find anything"),  # not an AWS error at all
    ],
    ids=["validation", "access denied", "internal", "not botocore"],
)
def test_other_errors_are_not_not_found(exc):
    assert not aws.is_not_found(exc)


def test_error_code_and_message():
    exc = NOT_FOUND["s3 get_object NoSuchKey"]
    assert (aws.error_code(exc), aws.error_message(exc)) == ("NoSuchKey", "The specified key does not exist.")
    assert aws.is_access_denied(client_error("AccessDenied", "Access Denied", "GetObject", 403))
    assert aws.is_access_denied(client_error("AccessDeniedException", "not authorized", "CreateModel"))
    plain = RuntimeError("boom")
    assert (aws.error_code(plain), aws.error_message(plain)) == ("", "boom")
    assert aws.error_message(client_error("X", "", "Op")) == str(client_error("X", "", "Op"))


def test_real_not_found_errors_from_moto_are_classified(aws_clients):
    """The same classification for the errors botocore actually raises (through moto's HTTP API)."""
    s3, sm, autoscaling = aws_clients("s3"), aws_clients("sagemaker"), aws_clients("application-autoscaling")
    s3.create_bucket(Bucket="b-1")
    calls = {
        "HeadObject": lambda: s3.head_object(Bucket="b-1", Key="missing"),
        "GetObject": lambda: s3.get_object(Bucket="b-1", Key="missing"),
        "HeadBucket": lambda: s3.head_bucket(Bucket="no-such-bucket-1"),
        "ListObjectsV2": lambda: s3.list_objects_v2(Bucket="no-such-bucket-1"),
        "DescribeEndpoint": lambda: sm.describe_endpoint(EndpointName="no-such-endpoint"),
        "DeregisterScalableTarget": lambda: autoscaling.deregister_scalable_target(
            ServiceNamespace="sagemaker",
            ResourceId="endpoint/none/variant/AllTraffic",
            ScalableDimension="sagemaker:variant:DesiredInstanceCount",
        ),
    }
    for operation, call in calls.items():
        with pytest.raises(ClientError) as caught:
            call()
        assert aws.is_not_found(caught.value), (operation, caught.value.response["Error"])


SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEY"


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (NoCredentialsError(), "no AWS credentials found"),
        (PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"), "no AWS credentials found"),
        (NoRegionError(), "no AWS region configured"),
        (
            EndpointConnectionError(endpoint_url=f"https://user:{SECRET}@sagemaker.us-east-1.amazonaws.com/"),
            "cannot reach the AWS API for sd-x: EndpointConnectionError",
        ),
        (
            ConnectTimeoutError(endpoint_url=f"https://h/?X-Amz-Security-Token={SECRET}"),
            "cannot reach the AWS API for sd-x",
        ),
        (ReadTimeoutError(endpoint_url=f"https://h/?X-Amz-Security-Token={SECRET}"), "sd-x did not answer in time"),
        (client_error("AccessDenied", "Access Denied", "GetObject", 403), "sd-x: AccessDenied: Access Denied"),
    ],
    ids=["no credentials", "partial", "no region", "unreachable", "connect timeout", "read timeout", "client error"],
)
def test_describe_failure_is_one_line_naming_the_target_without_secrets(exc, expected):
    text = aws.describe_failure(exc, "sd-x")
    assert text.startswith(expected) or expected in text
    assert SECRET not in text and "\n" not in text


@pytest.mark.parametrize(
    "exc",
    [
        ProxyConnectionError(proxy_url=f"http://proxyuser:{SECRET}@proxy.internal:3128", error="refused"),
        CredentialRetrievalError(provider="sso", error_msg=f"token https://x/?X-Amz-Security-Token={SECRET} expired"),
    ],
    ids=["proxy url with password", "credential provider message with a token URL"],
)
def test_describe_failure_redacts_urls_in_other_errors(exc):
    """Errors without a dedicated message fall back to str(exc): the URLs in it must be redacted."""
    text = aws.describe_failure(exc, "sd-x")
    assert text.startswith("sd-x: ")
    assert SECRET not in text


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:pass@example.com:8443/a/b?token=abc#frag", "https://example.com:8443/a/b"),
        ("https://user:pa/ss@word@host/path", "https://host/path"),  # '/' and '@' inside the password
        (
            f"https://b.s3.amazonaws.com/k.png?X-Amz-Credential=AKIA%2F&X-Amz-Security-Token={SECRET}",
            "https://b.s3.amazonaws.com/k.png",
        ),
        ("http://127.0.0.1:8080/invocations", "http://127.0.0.1:8080/invocations"),
        ("s3://bucket/key.png", "s3://bucket/key.png"),
        ("host/path?token=x#y", "host/path"),  # no scheme: still no query or fragment
        ("", ""),
    ],
)
def test_redact_url(url, expected):
    assert aws.redact_url(url) == expected


def test_parse_s3_uri():
    assert aws.parse_s3_uri("s3://bucket-1/a/b.png") == ("bucket-1", "a/b.png")
    assert aws.parse_s3_uri("s3://bucket-1", need_key=False) == ("bucket-1", "")
    assert aws.s3_prefix("s3://bucket-1") == "s3://bucket-1/"  # s3://b/ must not match s3://b-other/
    assert aws.s3_prefix("s3://bucket-1/out") == "s3://bucket-1/out"


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("https://bucket/key", "not a valid s3:// URI"),
        ("s3://Bad_Bucket/key", "not a valid s3:// URI"),
        ("s3://b/key", "not a valid s3:// URI"),  # bucket names have 3-63 characters
        ("s3://bucket-1", "names a bucket but no object key"),
        ("s3://bucket-1/", "names a bucket but no object key"),
        (None, "not a valid s3:// URI"),
        (123, "not a valid s3:// URI"),
        ("s3://" + "x" * 500, "..."),  # long values are shortened in the message
    ],
)
def test_parse_s3_uri_errors_name_the_field(uri, words):
    with pytest.raises(RequestError) as caught:
        aws.parse_s3_uri(uri, "init_image")
    assert caught.value.field == "init_image"
    assert str(caught.value).startswith("init_image: ")
    assert words in str(caught.value)
    assert len(str(caught.value)) < 200


def test_clients_are_cached_per_session_and_configuration():
    session = aws.new_session("us-east-1")
    s3 = aws.client("s3", session=session)
    assert aws.client("s3", session=session) is s3
    assert aws.client("s3", "us-east-1", session=session) is s3  # the session's region is the default
    assert aws.client("s3", "eu-west-1", session=session) is not s3
    quick = aws.client("s3", session=session, quick=True)
    assert quick is not s3 and aws.client("s3", session=session, quick=True) is quick
    assert quick.meta.config.read_timeout == 5 and quick.meta.config.connect_timeout == 3
    runtime = aws.client("sagemaker-runtime", session=session, read_timeout=70, retries=1)
    assert runtime.meta.config.read_timeout == 70
    assert aws.client("s3", session=aws.new_session("us-east-1")) is not s3  # a new session: a new client


def test_quick_clients_make_one_attempt():
    """The start-up check must not wait for retries: "quick" is one attempt, as its docstring says."""
    quick = aws.client("s3", session=aws.new_session("us-east-1"), quick=True)
    assert quick.meta.config.retries["total_max_attempts"] == 1


def test_lazy_client_is_built_once_on_first_use(monkeypatch):
    built: list[str] = []

    def fake_client(service: str, region: str | None = None) -> object:
        built.append(service)
        return object()

    monkeypatch.setattr(aws, "client", fake_client)
    lazy = aws.LazyClient("s3")
    assert built == []
    first = aws.resolve(lazy)
    assert aws.resolve(lazy) is first and built == ["s3"]
    plain = object()
    assert aws.resolve(plain) is plain and aws.resolve(None) is None


def test_clients_honour_aws_endpoint_url(aws_clients):
    """AWS_ENDPOINT_URL (set by the `aws` fixture) sends every client to moto; a real call goes through."""
    moto_url = aws_clients.url
    for service in ("s3", "sagemaker", "sts", "application-autoscaling"):
        assert aws.client(service).meta.endpoint_url == moto_url
    assert aws.client("sts").get_caller_identity()["Account"] == "123456789012"
    aws.client("s3").create_bucket(Bucket="b-1")
    assert [b["Name"] for b in aws.client("s3", quick=True).list_buckets()["Buckets"]] == ["b-1"]


def test_importing_aws_imports_no_boto3():
    code = "import sys, studio.aws; print(sorted(m for m in ('boto3', 'botocore') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_deploy_has_no_aws_helpers_of_its_own():
    """Sessions, clients and error classification come from studio.aws: no copies in studio/deploy (defect 5)."""
    copies = {"aws_session", "aws_client", "_error_code", "_error_message", "_is_not_found", "_session", "_client"}
    for path in sorted((REPO / "studio" / "deploy").glob("*.py")):
        tree = ast.parse(path.read_text())
        defined = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
        assert not defined & copies, (path.name, defined & copies)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in ("NoSuchBucket", "NoSuchKey", "404", "NotFound"):
                raise AssertionError(f"{path.name} spells S3 'not found' itself: {node.value!r}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "client":
                owner = ast.unparse(node.func.value)
                assert "session" not in owner and "boto3" not in owner, f"{path.name}: {owner}.client() outside aws"


class _Clients:
    """Plain boto3 clients on the moto server of the `aws` fixture."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __call__(self, service: str):
        return aws.new_session("us-east-1").client(service)


@pytest.fixture
def aws_clients(aws: str) -> _Clients:
    return _Clients(aws)
