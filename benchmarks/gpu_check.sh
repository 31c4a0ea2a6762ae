#!/usr/bin/env bash
# One GPU check for a lent CUDA machine (no internet): DALI NVDEC decode, MTCNN on CUDA, TensorRT and
# AOTInductor export + parity, the scanner end to end, and faces/s. Run from anywhere:
#     bash benchmarks/gpu_check.sh [--preset tiny|paper] [--skip-compile] [--frames N]
# Packages the machine lacks can travel as wheels in .whl/ at the repository root (pydantic,
# pydantic-settings, av, nvidia-dali-cuda130, torch-tensorrt + tensorrt matching the machine's torch, ...);
# they are installed into /tmp/site first. Steps whose packages are missing are reported as SKIP.
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "nvidia-smi: not available"
exec "$PY" -m benchmarks.gpu_check "$@"
