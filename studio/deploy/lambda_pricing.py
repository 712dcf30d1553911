"""What an image costs on the AWS Lambda target: the shipped, dated price table and the seconds per image.

Lambda bills GB-seconds (plus a small per-request fee), and its CPUs grow with the memory (one vCPU per 1,769 MB, six
at 10,240 MB), so the seconds per image shrink as the memory grows and the price per image stays roughly the same.
A shipped table rather than the Pricing API (extra permissions, answers only in two regions), like
studio.deploy.pricing for SageMaker. The CLI and the UI show `describe_lambda_price` before anything is created.
"""

from __future__ import annotations

LAMBDA_PRICES_AS_OF = "2025-06"
GB_SECOND_USD = 0.0000166667  # x86_64, first 6 billion GB-seconds a month, us-east-1
REQUEST_USD = 0.20 / 1_000_000
LAMBDA_PRICE_NOTE = (
    f"us-east-1 x86_64 list price as of {LAMBDA_PRICES_AS_OF}: ${GB_SECOND_USD:.10f} per GB-second and $0.20 per "
    "million requests; other regions differ — see https://aws.amazon.com/lambda/pricing/"
)
MB_PER_VCPU = 1769  # Lambda's documented CPU share: one vCPU per 1,769 MB, up to 6 vCPUs at 10,240 MB
# SD 1.5 at 512x512 on OpenVINO with 2 threads (measured in this repository on an AMD EPYC with avx512_bf16, quiet
# machine; see /work/shared/FACTS.md and the bench's `lambda` section): one guided step (UNet, batch 2) and the VAE
# decode. f32 is what CPUs without avx512_bf16/AMX run; the f32 decode is taken as torch fp32's (16.4 s).
REFERENCE_THREADS = 2
STEP_SECONDS = {"f32": 8.13, "bf16": 4.26}
DECODE_SECONDS = {"f32": 16.4, "bf16": 6.4}
# Memory SD 1.5 needs at 512x512 (peak RSS measured here, rounded up): f32 ~8.3 GB, bf16 (fp16 IR weights) ~5 GB.
# The demo model needs ~0.65 GB.
MIN_MEMORY_MB = {"f32": 10240, "bf16": 6144}


def vcpus(memory_mb: int) -> float:
    """Lambda's vCPUs at `memory_mb` (one per 1,769 MB, at most 6)."""
    return min(6.0, memory_mb / MB_PER_VCPU)


def seconds_per_image(memory_mb: int, precision: str = "f32", steps: int = 20) -> float:
    """Estimated seconds for one 512x512 SD 1.5 image at `memory_mb`: the reference scaled linearly from 2 threads to
    Lambda's vCPUs (optimistic above 2 vCPUs: OpenVINO does not scale perfectly)."""
    reference = steps * STEP_SECONDS[precision] + DECODE_SECONDS[precision]
    return reference * REFERENCE_THREADS / vcpus(memory_mb)


def price_per_image(memory_mb: int, precision: str = "f32", steps: int = 20) -> float:
    """USD for one 512x512 SD 1.5 image at `memory_mb`: GB-seconds x price, plus the request."""
    return memory_mb / 1024 * seconds_per_image(memory_mb, precision, steps) * GB_SECOND_USD + REQUEST_USD


def describe_lambda_price(memory_mb: int, steps: int = 20) -> str:
    """One human sentence about what an image costs at `memory_mb` (for the CLI prompt and the UI)."""
    f32, bf16 = seconds_per_image(memory_mb, "f32", steps), seconds_per_image(memory_mb, "bf16", steps)
    low = ""
    if memory_mb < MIN_MEMORY_MB["bf16"]:
        low = f" (too little for SD 1.5: it needs {MIN_MEMORY_MB['bf16']} MB with bf16, {MIN_MEMORY_MB['f32']} MB f32)"
    elif memory_mb < MIN_MEMORY_MB["f32"]:
        low = f" (SD 1.5 at 512x512 needs {MIN_MEMORY_MB['f32']} MB on CPUs without bf16)"
    return (
        f"Lambda {memory_mb} MB ({vcpus(memory_mb):.1f} vCPU){low}: one 512x512 SD 1.5 image, {steps} steps, takes "
        f"about {f32:.0f} s and costs ${price_per_image(memory_mb, 'f32', steps):.4f} on CPUs without bf16 "
        f"(about {bf16:.0f} s, ${price_per_image(memory_mb, 'bf16', steps):.4f} where the CPU has avx512_bf16/AMX); "
        f"$0 while idle; the first request after a while also pays a cold start ({LAMBDA_PRICE_NOTE})."
    )
