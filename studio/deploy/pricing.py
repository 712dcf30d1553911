"""What an endpoint costs and which container runs it: the shipped price table and the default DLC image.

A small shipped table rather than the Pricing API, which needs extra permissions and answers only in us-east-1 and
ap-south-1. The UI and the CLI show `describe_price` before anything is created.
"""

from __future__ import annotations

# On-demand prices (USD per instance-hour) for SageMaker real-time/async inference in us-east-1. g4dn and g5 are the
# published list prices; g6/g6e are estimates (EC2 price x the usual SageMaker markup). Other regions differ.
PRICES_AS_OF = "2025-06"
PRICE_NOTE = (
    f"approximate us-east-1 on-demand list price as of {PRICES_AS_OF}; other regions differ — "
    "see https://aws.amazon.com/sagemaker/pricing/"
)
INSTANCE_PRICES: dict[str, float] = {
    "ml.g4dn.xlarge": 0.736,
    "ml.g4dn.2xlarge": 0.94,
    "ml.g4dn.4xlarge": 1.505,
    "ml.g4dn.8xlarge": 2.72,
    "ml.g4dn.12xlarge": 4.89,
    "ml.g5.xlarge": 1.408,
    "ml.g5.2xlarge": 1.515,
    "ml.g5.4xlarge": 2.03,
    "ml.g5.8xlarge": 3.06,
    "ml.g5.12xlarge": 7.09,
    "ml.g6.xlarge": 1.127,
    "ml.g6.2xlarge": 1.369,
    "ml.g6.4xlarge": 1.853,
    "ml.g6.8xlarge": 2.82,
    "ml.g6.12xlarge": 6.442,
    "ml.g6e.xlarge": 2.605,
    "ml.g6e.2xlarge": 3.139,
    "ml.g6e.4xlarge": 4.206,
    "ml.p3.2xlarge": 3.825,
}
DEFAULT_INSTANCE_TYPE = "ml.g5.xlarge"

DEFAULT_DLC = "pytorch-inference:2.6.0-gpu-py312"
DLC_ACCOUNT = "763104351884"
# Regions whose Deep Learning Containers live in another account (from the sagemaker-python-sdk image_uri_config).
DLC_ACCOUNT_BY_REGION = {
    "af-south-1": "626614931356",
    "ap-east-1": "871362719292",
    "ap-northeast-3": "364406365360",
    "cn-north-1": "727897471807",
    "cn-northwest-1": "727897471807",
    "eu-south-1": "692866216735",
    "me-south-1": "217643126080",
    "us-gov-west-1": "442386744353",
}


def price_per_hour(instance_type: str) -> float | None:
    """On-demand USD per instance-hour from the shipped table (None when unknown)."""
    return INSTANCE_PRICES.get(instance_type)


def describe_price(
    instance_type: str, mode: str = "realtime", min_instances: int | None = None, max_instances: int = 1
) -> str:
    """One human sentence about what the deployment costs per hour, for the CLI prompt and the UI."""
    price = price_per_hour(instance_type)
    if price is None:
        return f"{instance_type}: price unknown"
    low = (0 if mode == "async" else 1) if min_instances is None else min_instances
    high = max(max_instances, low, 1)
    idle = "$0.00/h when idle (scales to zero)" if low == 0 else f"${low * price:.2f}/h with {low} instance(s)"
    return (
        f"{instance_type}: ${price:.3f} per instance-hour ({PRICE_NOTE}). {mode}: {idle}, "
        f"up to ${high * price:.2f}/h at {high} instance(s)."
    )


def default_image(region: str) -> str:
    """The AWS PyTorch inference DLC for `region` (our code rides in model.tar.gz)."""
    account = DLC_ACCOUNT_BY_REGION.get(region, DLC_ACCOUNT)
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"{account}.dkr.ecr.{region}.{domain}/{DEFAULT_DLC}"
