#!/usr/bin/env bash
# Download the pure-Python wheels that bench/gpu_session.sh's serving and quantization parts need into .whl/ (the lent
# GPU machine reaches no package index; bench/gpu_env.sh installs .whl/*.whl there). .whl/ is git-ignored: pass it to
# the device run with carry: [".whl"].
#   bash bench/fetch_gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip download -q -d .whl --no-deps --only-binary=:all: \
  fastapi starlette uvicorn h11 httpx httpcore anyio sniffio idna certifi python-multipart \
  annotated-doc typing-inspection opentelemetry-api importlib-metadata zipp click optimum-quanto ninja
# pydantic / pydantic-core are compiled per Python version: the GPU machine must already have them (or fetch the
# matching wheel with --python-version X.Y --platform manylinux2014_x86_64).
ls .whl
