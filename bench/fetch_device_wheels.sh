#!/usr/bin/env bash
# Wheels of the project's dependencies that a bare GPU machine (Python 3.12, torch,
# numba, scipy, pytest installed) lacks, for `bench/device_check.sh OUT_DIR WHEEL_DIR`.
#   bench/fetch_device_wheels.sh .whl
set -euo pipefail
DEST=${1:-.whl}
mkdir -p "$DEST"
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEST" hydra-core omegaconf submitit mpich  # mpich: mpiexec for the two-rank decode test
# omegaconf pins antlr4 4.9.*, published as a pure-Python sdist only: build its (any-Python) wheel here
python3 -m pip wheel -q --no-deps -w "$DEST" antlr4-python3-runtime==4.9.3
ls -l "$DEST"
