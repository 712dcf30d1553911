"""`from studio.remote import ...`: the remote engines, which live in studio.engines.remote and .transports.

RemoteEngine drives a serving app over a Transport (plain HTTP, SageMaker real-time or async, AWS Lambda). Build
engines with `studio.engines.build(settings)`; these names stay for code that wires transports by hand (tests, the
bench).
"""

from studio.engines.lambda_transport import LambdaFunctionUrl, LambdaInvoke, make_lambda_client
from studio.engines.remote import RemoteEngine, http_engine, lambda_engine, sagemaker_engine
from studio.engines.transports import (
    Backoff,
    HttpTransport,
    SageMakerAsync,
    SageMakerRealtime,
    Transport,
    make_runtime_client,
)

__all__ = [
    "Backoff",
    "HttpTransport",
    "LambdaFunctionUrl",
    "LambdaInvoke",
    "RemoteEngine",
    "SageMakerAsync",
    "SageMakerRealtime",
    "Transport",
    "http_engine",
    "lambda_engine",
    "make_lambda_client",
    "make_runtime_client",
    "sagemaker_engine",
]
