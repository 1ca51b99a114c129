#!/usr/bin/env bash
# Run HERE (the development machine), once per checkout, before bench/gpu.sh goes to the
# accelerator machine: the packages the project needs that the accelerator machine's image
# lacks (lvis, pycocotools, msgspec, submitit), as wheels for its Python 3.12, in .whl/
# (ignored by git; name it in the device run's `carry`). Everything else (torch, torchvision,
# typer, rich, h5py, scipy, matplotlib, seaborn, cloudpickle, opencv) is in that image.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
    manylinux1_x86_64; do platforms+=(--platform "$p"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d .whl \
    pycocotools==2.0.11 msgspec==0.23.0
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl lvis==0.5.3 submitit==1.5.4
ls -la .whl
