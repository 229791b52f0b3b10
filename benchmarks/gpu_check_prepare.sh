#!/usr/bin/env bash
# Fill .gpu/ (git-ignored) with what benchmarks/gpu_check.py needs on a lent GPU machine, which
# can neither download nor see ../shared: the CIFAR-10 JPEGs packed into one file, and the wheels
# of the three packages it lacks (all pure Python). Needs ../shared/datasets/CIFAR-10-JPEG and
# PyPI. Then one device call with carry=[".gpu"]:
#   python3 benchmarks/gpu_check.py --out $OUT/gpu_check.md
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p .gpu
rm -f .gpu/*.whl
"$PY" benchmarks/pack_cifar.py --dest .gpu/cifar10_jpeg.npz --max-mib 45
# hydra-core and omegaconf publish py3-none-any wheels; ask for Python 3.12's (the lent machine's)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform any -d .gpu hydra-core==1.3.8 omegaconf==2.3.1
# antlr4-python3-runtime 4.9.3 (omegaconf 2.3 pins 4.9.*) is an sdist only: build its
# pure-Python wheel here, so that the offline machine needs no build tools
"$PY" -m pip wheel -q --no-deps -w .gpu antlr4-python3-runtime==4.9.3
ls -l .gpu
du -sh .gpu
