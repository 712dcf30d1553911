"""studio.deploy.pricing: the price shown before deploying, and the default container image per region."""

from __future__ import annotations

from studio.deploy import default_image, describe_price, price_per_hour


def test_price_text_and_default_image():
    assert price_per_hour("ml.g5.xlarge") == 1.408
    assert price_per_hour("ml.nope") is None
    text = describe_price("ml.g5.xlarge", "async", None, 2)
    assert "$0.00/h when idle" in text and "$2.82/h at 2 instance(s)" in text
    assert "$1.41/h with 1 instance(s)" in describe_price("ml.g5.xlarge")
    assert describe_price("ml.nope") == "ml.nope: price unknown"
    assert default_image("eu-west-1").startswith("763104351884.dkr.ecr.eu-west-1.amazonaws.com/")
    assert default_image("cn-north-1") == (
        "727897471807.dkr.ecr.cn-north-1.amazonaws.com.cn/pytorch-inference:2.6.0-gpu-py312"
    )
