"""RemoteEngine: the Engine protocol over a transport to a serving app (studio.serving) somewhere else.

The request is validated here with the same `GenerationRequest.validate` the server uses, so bad input fails before
any network call, and the seed is resolved here so the caller knows it. The body is the one wire codec
(studio.wire) in both directions. `sagemaker_engine(name)` picks real-time or async from the endpoint's config;
`http_engine(url)` talks to any host running `python -m studio.serving`; `lambda_engine(function)` to a Lambda
function running studio.serving.aws_lambda (by name/ARN with lambda.invoke, or by its function URL, SigV4-signed).
Nothing here imports torch or boto3 at import time: a remote-only studio stays light.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from studio import aws, wire
from studio.engine import CancelToken, EngineError, EngineStatus, GenerationCancelled, LivePreview, ProgressCallback
from studio.engines.transports import (
    ASYNC_READ_TIMEOUT,
    HttpTransport,
    SageMakerAsync,
    SageMakerRealtime,
    Transport,
    make_runtime_client,
)
from studio.samplers import sampler_names
from studio.types import DEFAULT_LIMITS, GenerationRequest, GenerationResult, Limits
from studio.wire import Fetch, S3Reader

logger = logging.getLogger(__name__)

STATUS_TTL = 5.0  # seconds a transport check is reused (Settings may poll status)


class RemoteEngine:
    """The Engine protocol over a transport; results come back with backend "http", "sagemaker" or "lambda".

    `fetch` reads images a response gives only as URIs (a server writing its results to S3); without it such a
    response is an error naming the field.
    """

    def __init__(
        self, transport: Transport, *, name: str = "", limits: Limits = DEFAULT_LIMITS, fetch: Fetch | None = None
    ):
        self.transport = transport
        self.name = name or transport.target
        self.limits = limits
        self.backend = transport.backend
        self.fetch = fetch
        self._status: tuple[float, EngineStatus] | None = None

    def load(self, model: str | None = None) -> None:
        """Check the target answers; there is no model to load here (the server has its own)."""
        if model is not None:
            raise EngineError(f"the {self.backend} backend has no local model: {self.name} serves its own")
        status = self.transport.check()
        self._status = (time.monotonic(), status)
        if status.error:
            raise EngineError(f"{self.name}: {status.error}")

    def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        preview: LivePreview | None = None,  # not shown: the latents stay on the remote side
    ) -> GenerationResult:
        request = request.validate(self.limits).with_resolved_seed()
        if cancel is not None and cancel.is_set():
            raise GenerationCancelled()
        total = request.steps * request.count
        if on_progress is not None:
            on_progress(0, total)
        started = time.perf_counter()
        payload = wire.encode_request(request)
        response = self.transport.invoke(payload, total=total, on_progress=on_progress, cancel=cancel)
        result = wire.decode_result(response, request, backend=self.backend, fetch=self.fetch)
        result.timings["remote_total"] = time.perf_counter() - started
        if not result.model:
            result.model = self.name
        if on_progress is not None:
            on_progress(total, total)
        return result

    def status(self) -> EngineStatus:
        """The transport's health (cached for STATUS_TTL seconds: Settings may poll it)."""
        now = time.monotonic()
        if self._status is None or now - self._status[0] > STATUS_TTL:
            try:
                status = self.transport.check()
            except Exception as exc:  # status must never raise into the UI
                status = EngineStatus(backend=self.backend, model=self.name, error=str(exc))
            self._status = (now, status)
        return self._status[1]

    def samplers(self) -> list[str]:
        return sampler_names()  # the serving app uses the same registry


def http_engine(url: str, *, timeout: float = 600.0, limits: Limits = DEFAULT_LIMITS) -> RemoteEngine:
    """A RemoteEngine for any host running the serving app."""
    transport = HttpTransport(url, timeout)
    return RemoteEngine(transport, name=transport.target, limits=limits)


def _default_input_location(output_path: str) -> str:
    """Where async requests are uploaded: next to the endpoint's output path (…/async-output/ → …/async-input/)."""
    bucket, prefix = aws.parse_s3_uri(output_path, "S3OutputPath", need_key=False)
    parts = [p for p in prefix.split("/") if p]
    parent = "/".join(parts[:-1])
    return f"s3://{bucket}/{parent + '/' if parent else ''}async-input/"


def sagemaker_engine(
    endpoint_name: str,
    *,
    session: Any = None,
    input_location: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> RemoteEngine:
    """A RemoteEngine for a SageMaker endpoint: async when its config has AsyncInferenceConfig, else real-time.

    Async requests are uploaded to `input_location` (default: async-input/ beside the endpoint's S3OutputPath).
    Images a response names by s3:// URI are read with the same session's S3 client.
    """
    session = session if session is not None else aws.new_session()
    sagemaker = aws.client("sagemaker", session=session)
    try:
        endpoint = sagemaker.describe_endpoint(EndpointName=endpoint_name)
        config = sagemaker.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    except Exception as exc:
        raise EngineError(aws.describe_failure(exc, endpoint_name)) from None
    if endpoint.get("EndpointStatus") not in ("InService", "Updating"):
        logger.warning("endpoint %s is %s", endpoint_name, endpoint.get("EndpointStatus"))

    def s3() -> Any:  # built on first use (clients are cached on the session)
        return aws.client("s3", session=session)

    async_config = config.get("AsyncInferenceConfig")
    transport: Transport
    if async_config:
        output_path = async_config.get("OutputConfig", {}).get("S3OutputPath", "")
        location = input_location or (_default_input_location(output_path) if output_path else "")
        runtime = make_runtime_client(session, read_timeout=ASYNC_READ_TIMEOUT)
        transport = SageMakerAsync(endpoint_name, runtime, s3(), location, sagemaker_client=sagemaker)
    else:
        transport = SageMakerRealtime(endpoint_name, make_runtime_client(session), sagemaker_client=sagemaker)
    return RemoteEngine(transport, name=endpoint_name, limits=limits, fetch=S3Reader(s3))


def lambda_engine(
    function: str, *, session: Any = None, limits: Limits = DEFAULT_LIMITS, sign_url: bool = True
) -> RemoteEngine:
    """A RemoteEngine for a Lambda function running studio.serving.aws_lambda.handler.

    `function` is a function name or ARN (invoked with lambda.invoke, RequestResponse) or its function URL (POSTed,
    SigV4-signed unless `sign_url` is False, for a URL with AuthType NONE). Images a response names by s3:// URI
    (s3_output) are read with the same session's S3 client. Nothing is called here: `load()` checks the function.
    """
    from studio.engines.lambda_transport import LambdaFunctionUrl, LambdaInvoke, is_function_url, make_lambda_client

    session = session if session is not None else aws.new_session()
    transport: Transport
    if is_function_url(function):
        transport = LambdaFunctionUrl(function, session=session, sign=sign_url)
    else:
        transport = LambdaInvoke(function, make_lambda_client(session))

    def s3() -> Any:
        return aws.client("s3", session=session)

    return RemoteEngine(transport, name=transport.target, limits=limits, fetch=S3Reader(s3))
