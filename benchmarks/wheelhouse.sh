#!/usr/bin/env bash
# Fill .whl/ (ignored by git) with what a bare GPU box may lack to run benchmarks/gpu.py and benchmarks/device.py
# without a network: dhgen's own wheel (its model families are entry points), PyAV (FFmpeg bundled), nvidia-ml-py,
# rich/typer/tqdm, and pytest for the GPU-marked tests. torch, numpy and OpenCV are expected there (large).
# Wheels are for the box's Python: PY=3.12 benchmarks/wheelhouse.sh (default: this Python's version).
# Carry it with the checkout: the device tool's `carry: [".whl"]` (64 MiB in all; this is ~45 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
PY=${PY:-$($PYTHON -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}
rm -rf .whl && mkdir .whl
$PYTHON -m pip wheel -q --no-deps -w .whl .
$PYTHON -m pip download -q -d .whl --only-binary=:all: --python-version "$PY" --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    "av>=14" "nvidia-ml-py>=12" "rich>=13" "typer>=0.12" "tqdm>=4.66" "pytest>=8"
du -sh .whl && ls .whl
