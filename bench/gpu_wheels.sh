#!/usr/bin/env bash
# Fetch, on a machine with a registry, the wheels bench/gpu_check.sh installs on the GPU machine
# (which has no network): the versions this checkout's requirements pin that its image lacks or
# holds at other versions (transformers 5.17 there; >=5.24 here), for CPython 3.12 x86-64.
# Into .whl/, which git ignores through .git/info/exclude; the device run carries it.
set -euo pipefail
cd "$(dirname "$0")/.."
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qsx '/.whl/' "$exclude" || echo /.whl/ >>"$exclude"
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-warn-script-location --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  transformers==5.24.0 peft==0.21.2 trl==1.16.0 datasets==5.2.0 huggingface_hub==2.4.0 \
  tokenizers==0.23.3 accelerate==1.15.0 sqlite-utils==4.2.1 sqlite-fts4==1.0.3 \
  click-default-group==1.2.4 krippendorff==0.9.0 dill==0.4.1 multiprocess==0.70.19
du -sh .whl
