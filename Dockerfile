# SD Studio serving container for SageMaker (or any Docker host with an NVIDIA GPU).
#
#   docker build -t sd-studio-serve .
#   docker run --gpus all -p 8080:8080 -v /path/to/model:/opt/ml/model:ro sd-studio-serve serve
#   docker run --gpus all -p 8080:8080 -e STUDIO_MODEL=stabilityai/stable-diffusion-2-1-base sd-studio-serve serve
#
# SageMaker starts it as `docker run IMAGE serve`: the `serve` console script (studio.serving.__main__:serve_main)
# drops that leading "serve" and listens on 0.0.0.0:8080 (GET /ping, POST /invocations). The model comes from
# --model or STUDIO_MODEL (a hub id), else /opt/ml/model (a diffusers folder or one .safetensors/.ckpt file), else the
# demo model (studio.models.serving_model: the same rule as the SageMaker toolkit handlers). Other settings:
# STUDIO_ENGINE (torch|openvino), STUDIO_DEVICE, STUDIO_S3_OUTPUT, STUDIO_S3_ALLOWED_PREFIXES, STUDIO_MAX_BODY_BYTES,
# STUDIO_ALLOW_URLS, STUDIO_MAX_* (see studio/config.py).

ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

# torch pinned like requirements.txt. On Linux x86_64 the PyPI wheel *is* the CUDA build (its CUDA runtime comes as
# nvidia-* wheels; the host's NVIDIA container runtime provides the driver). To pick a CUDA version explicitly:
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/opt/hf-cache \
    STUDIO_CACHE=/opt/studio-cache \
    SM_MODEL_DIR=/opt/ml/model

WORKDIR /opt/sd-studio

# Dependencies first (their layer is reused until requirements.txt changes). requirements.txt pins torch==2.13.0,
# which the CUDA build installed here satisfies (a local version label such as +cu128 still matches).
RUN pip install --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple "torch==${TORCH_VERSION}"
COPY requirements.txt ./
RUN pip install -r requirements.txt

# The package itself (pyproject.toml declares the `serve` script; app.py is one of its modules).
COPY pyproject.toml app.py ./
COPY studio ./studio
RUN pip install --no-deps . && mkdir -p /opt/ml/model "${HF_HOME}" "${STUDIO_CACHE}"

EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s \
    CMD python -c "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/ping', timeout=4).status != 200)"
ENTRYPOINT ["serve"]
CMD []
