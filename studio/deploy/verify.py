"""Prove an endpoint generates: the smoke test `create` runs after InService, and the container's last log lines.

InService only means SageMaker's /ping answered. On the PyTorch DLC, /ping is 200 as soon as TorchServe's worker
starts, before the model has loaded (and it used to stay 200 while a broken model was retried), so `create` sends
one tiny request (64x64, 2 steps) the way the studio will — real-time through invoke_endpoint, async through S3
and the endpoint's output location — and reports the endpoint ready only when a decodable 64x64 image comes back.

While the first answer is pending (a cold endpoint may still be loading its model), the request is retried until
`timeout_seconds`; each retry also reads the container's CloudWatch log group (/aws/sagemaker/Endpoints/NAME), and
the load-failure line the toolkit handlers write (studio.serving.toolkit.LOAD_FAILED_MARK) ends the wait at once.
On failure the error carries the last log lines.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from studio import aws
from studio.deploy.plan import DeployError, ProgressCallback
from studio.engine import EngineError, EngineNotReady
from studio.types import GenerationRequest, RequestError

log = logging.getLogger(__name__)

LOAD_FAILED_MARK = "SD-STUDIO-MODEL-LOAD-FAILED"  # = studio.serving.toolkit.LOAD_FAILED_MARK (kept light here)
LOG_LINES = 30
SMOKE_SIZE = 64
# Failures that mean "not answering yet" (a cold endpoint loading its model): retried until the deadline.
_PENDING = ("did not answer in time", "not ready", "throttling", "no result after", "is loading", "not loaded yet")


def log_group(endpoint: str) -> str:
    return f"/aws/sagemaker/Endpoints/{endpoint}"


def smoke_request() -> GenerationRequest:
    """The tiny request: 64x64, 2 steps, a fixed seed (any model answers it in well under a second on a GPU)."""
    return GenerationRequest(prompt="sd-studio smoke test", steps=2, width=SMOKE_SIZE, height=SMOKE_SIZE, seed=1)


def container_logs(logs_client: Any, endpoint: str, lines: int = LOG_LINES) -> list[str]:
    """The last `lines` log lines of the endpoint's containers (newest streams, oldest line first).

    Never raises: a missing group or an AWS error comes back as one explanatory line.
    """
    group = log_group(endpoint)
    try:
        streams = logs_client.describe_log_streams(
            logGroupName=group, orderBy="LastEventTime", descending=True, limit=5
        ).get("logStreams", [])
        events: list[tuple[int, str, str]] = []
        for stream in streams:
            name = stream["logStreamName"]
            answer = logs_client.get_log_events(
                logGroupName=group, logStreamName=name, limit=lines, startFromHead=False
            )
            events += [(e.get("timestamp", 0), name, e.get("message", "").rstrip()) for e in answer.get("events", [])]
    except Exception as exc:  # noqa: BLE001 - the logs are a help for the message, never a new failure
        if aws.is_not_found(exc):
            return [f"(no container logs yet: the log group {group} does not exist)"]
        return [f"(could not read {group}: {aws.error_code(exc) or type(exc).__name__}: {aws.error_message(exc)})"]
    if not events:
        return [f"(the log group {group} has no log lines yet)"]
    events.sort(key=lambda event: event[0])
    return [f"{stream}: {message}" for _, stream, message in events[-lines:]]


def load_failure(log_lines: list[str]) -> str | None:
    """The toolkit's load-failure line, if the logs have one."""
    return next((line for line in reversed(log_lines) if LOAD_FAILED_MARK in line), None)


@dataclass
class SmokeTest:
    """One smoke test of an endpoint. `engine` is a studio RemoteEngine for it; `logs` a CloudWatch Logs client."""

    endpoint: str
    engine: Any
    logs: Any
    say: ProgressCallback
    timeout_seconds: float
    retry_seconds: float = 15.0
    sleep: Callable[[float], None] = time.sleep
    log_check_seconds: float = 30.0  # while an async request waits: how often the logs are read for a load failure
    _log_checked: float = 0.0

    def run(self) -> float:
        """Seconds until the endpoint answered with the image; DeployError("verify", ... + log lines) otherwise."""
        started = time.monotonic()
        deadline = started + self.timeout_seconds
        attempt = 0
        while True:
            attempt += 1
            self.say("verify", f"sending a {SMOKE_SIZE}x{SMOKE_SIZE}, 2-step request to {self.endpoint} ({attempt})")
            try:
                self._check(self.engine.generate(smoke_request(), on_progress=self._watch))
                seconds = time.monotonic() - started
                size = f"{SMOKE_SIZE}x{SMOKE_SIZE}"
                self.say("verify", f"{self.endpoint} answered with a {size} image in {seconds:.1f} s")
                return seconds
            except RequestError as exc:
                self._fail(f"the endpoint refused the smoke request: {exc}")
            except EngineError as exc:
                if not self._pending(exc):
                    self._fail(f"the smoke request failed: {exc}")
                lines = container_logs(self.logs, self.endpoint)
                failure = load_failure(lines)
                if failure is not None:
                    self._fail(f"the container could not load the model: {failure}", lines)
                if time.monotonic() + self.retry_seconds > deadline:
                    self._fail(f"no image after {self.timeout_seconds:.0f} s; last error: {exc}", lines)
                self.say("verify", f"not answering yet ({exc}); retrying in {self.retry_seconds:.0f} s")
                self.sleep(self.retry_seconds)

    def _watch(self, step: int, total: int) -> None:
        """Called while a request waits (async polls): end the wait when the container logged a load failure."""
        now = time.monotonic()
        if now - self._log_checked < self.log_check_seconds:
            return
        self._log_checked = now
        lines = container_logs(self.logs, self.endpoint)
        failure = load_failure(lines)
        if failure is not None:
            self._fail(f"the container could not load the model: {failure}", lines)

    def _check(self, result: Any) -> None:
        images = list(getattr(result, "images", []) or [])
        if not images:
            self._fail("the smoke request came back without an image")
        if tuple(images[0].size) != (SMOKE_SIZE, SMOKE_SIZE):
            self._fail(f"the smoke request came back with a {images[0].size} image, not {SMOKE_SIZE}x{SMOKE_SIZE}")

    @staticmethod
    def _pending(exc: EngineError) -> bool:
        return isinstance(exc, EngineNotReady) or any(mark in str(exc).lower() for mark in _PENDING)

    def _fail(self, message: str, lines: list[str] | None = None) -> None:
        lines = lines if lines is not None else container_logs(self.logs, self.endpoint)
        shown = "\n".join(f"    {line}" for line in lines)
        self.say("verify", f"FAILED: {message}")
        self.say("verify", f"last container log lines ({log_group(self.endpoint)}):\n{shown}")
        raise DeployError("verify", f"{message}\n  last container log lines ({log_group(self.endpoint)}):\n{shown}")


def smoke_engine(endpoint: str, session: Any, *, timeout_seconds: float, poll_seconds: float) -> Any:
    """A RemoteEngine for the endpoint (real-time, or async through S3), with the smoke test's time limits."""
    from studio.engines.remote import RemoteEngine, _default_input_location
    from studio.engines.transports import Backoff, SageMakerAsync, SageMakerRealtime, make_runtime_client
    from studio.wire import S3Reader

    sagemaker = aws.client("sagemaker", session=session)
    config_name = sagemaker.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
    config = sagemaker.describe_endpoint_config(EndpointConfigName=config_name)
    s3 = aws.client("s3", session=session)
    output_path = (config.get("AsyncInferenceConfig") or {}).get("OutputConfig", {}).get("S3OutputPath")
    if output_path:
        poll = Backoff(first=min(1.0, poll_seconds), factor=1.5, maximum=max(poll_seconds, 0.05))
        runtime = make_runtime_client(session, read_timeout=60)
        transport: Any = SageMakerAsync(
            endpoint,
            runtime,
            s3,
            _default_input_location(output_path),
            sagemaker_client=sagemaker,
            timeout=timeout_seconds,
            poll=poll,
        )
    else:
        transport = SageMakerRealtime(endpoint, make_runtime_client(session), sagemaker_client=sagemaker, max_retries=2)
    return RemoteEngine(transport, name=endpoint, fetch=S3Reader(lambda: s3))


def verify_endpoint(
    endpoint: str,
    session: Any,
    say: ProgressCallback,
    *,
    timeout_seconds: float,
    poll_seconds: float = 15.0,
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Run the smoke test on `endpoint`; seconds to the first image, or DeployError("verify") with the logs."""
    engine = smoke_engine(endpoint, session, timeout_seconds=timeout_seconds, poll_seconds=poll_seconds)
    logs = aws.client("logs", session=session)
    test = SmokeTest(
        endpoint,
        engine,
        logs,
        say,
        timeout_seconds,
        retry_seconds=min(15.0, poll_seconds),
        sleep=sleep,
        log_check_seconds=min(30.0, max(poll_seconds, 0.1) * 2),
    )
    return test.run()
