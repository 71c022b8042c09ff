# syntax=docker/dockerfile:1
# The nmt translation server (`nmt serve`): POST /translate, GET /health /info /metrics /docs.
#
# GPU image (CUDA PyTorch base, the default):
#   docker build -t nmt-serve .
# CPU-only image (slim Python plus the CPU wheel of torch):
#   docker build -t nmt-serve:cpu \
#     --build-arg BASE_IMAGE=python:3.11-slim \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
#
# The server reads its checkpoint from /models/model.pt. Either mount it:
#   docker run --rm -p 8000:8000 -v "$PWD/runs/multi30k_de_en_de-en/best.pt:/models/model.pt:ro" nmt-serve
#   (GPU: add --gpus all)
# or bake it into the image: copy it into models/ of the build context and name it,
#   docker build --build-arg CHECKPOINT=models/best.pt -t nmt-serve:multi30k .
# Options after the image name replace the default arguments below, e.g.
#   docker run ... nmt-serve --checkpoint /models/model.pt --host 0.0.0.0 --max-batch-size 64
# (keep --host 0.0.0.0 and --port 8000, which the health check uses). API key: -e NMT_API_KEY=...
# `nmt serve` handles SIGTERM itself (docker stop): it stops every worker process, then exits.

# The default base carries torch 2.5.1 with CUDA 12.4, the oldest torch the project supports
# (pyproject: torch>=2.5,<2.15; the test suite runs on 2.13). `pip install` keeps the base's
# torch. A newer pytorch/pytorch runtime tag works the same way.
ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${BASE_IMAGE}

# Only with a base that has no torch (e.g. python:3.11-slim): a wheel index (e.g. the CPU
# one) to install torch from. With a torch base it would install a second torch over it.
ARG TORCH_INDEX_URL=""
# A checkpoint inside the build context to bake in as /models/model.pt (empty: mount one).
ARG CHECKPOINT=""

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

WORKDIR /opt/nmt
COPY pyproject.toml README.md ./
COPY nmt ./nmt
COPY serve ./serve
RUN if [ -n "${TORCH_INDEX_URL}" ]; then \
        pip install --index-url "${TORCH_INDEX_URL}" "torch>=2.5,<2.15"; \
    fi \
    && pip install /opt/nmt \
    && nmt serve --help > /dev/null

RUN --mount=type=bind,source=.,target=/context \
    mkdir -p /models \
    && if [ -n "${CHECKPOINT}" ]; then install -m 0444 "/context/${CHECKPOINT}" /models/model.pt; fi \
    && useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin nmt

USER 10001
WORKDIR /home/nmt
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"]

ENTRYPOINT ["nmt", "serve"]
CMD ["--checkpoint", "/models/model.pt", "--host", "0.0.0.0", "--port", "8000"]
