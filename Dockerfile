# RALF queue worker image. The PyTorch and DALI wheels bring their own CUDA runtime, so the base
# only needs the NVIDIA container environment; the host provides the driver (>= the CUDA 13 minimum).
ARG BASE_IMAGE=nvidia/cuda:13.0.0-base-ubuntu24.04
FROM ${BASE_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,video

# libgl1/libglib2.0-0: OpenCV (pulled in by ultralytics) needs them even without a display.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv libgl1 libglib2.0-0 ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
COPY pyproject.toml README.md ./
COPY ralf ./ralf
COPY pipeline ./pipeline
COPY worker ./worker
COPY trainer ./trainer
COPY cli ./cli
COPY api ./api
RUN pip install . && python -c "import cli.main, worker.workers, api.app"

RUN useradd --system --create-home --uid 10001 ralf
USER ralf

# Defaults match compose.yaml's volumes; every RALF_* variable can be overridden at run time.
ENV RALF_WEIGHTS=/weights/ralf.safetensors \
    RALF_MEDIA_ROOTS=/media

CMD ["ralf-cli", "worker"]
