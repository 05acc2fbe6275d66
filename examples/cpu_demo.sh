#!/usr/bin/env bash
# The CPU demo (the README's main command): build a corpus that is already on every machine
# (this interpreter's standard library), train a tokenizer, preprocess it into a zarr store,
# train a tiny block-diffusion model (block size 4) for ~6-10 minutes on CPU, then sample.
#
#   bash examples/cpu_demo.sh                 # everything, resumable (re-run continues)
#   RUN_DIR=runs/x bash examples/cpu_demo.sh training.train_iters=200   # overrides pass through
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=runs/cpu_demo_data
RUN_DIR=${RUN_DIR:-runs/cpu_demo}
STDLIB=$(python -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
# top-level modules plus a dozen packages: ~2.4M tokens of real Python, no site-packages
INPUTS=("$STDLIB"/*.py)
for pkg in json email asyncio collections http logging unittest urllib xml importlib concurrent; do
  INPUTS+=("$STDLIB/$pkg")
done
mkdir -p "$DATA"
if [ ! -f "$DATA/tokenizer.json" ]; then
  megatron-diffusion train-tokenizer --input "${INPUTS[@]}" --glob '*.py' --vocab-size 2048 \
    --output "$DATA/tokenizer.json"
fi
if [ ! -d "$DATA/stdlib.zarr" ]; then
  megatron-diffusion preprocess --input "${INPUTS[@]}" --glob '*.py' --workers 2 \
    --tokenizer "$DATA/tokenizer.json" --validation-fraction 0.05 --output "$DATA/stdlib.zarr"
fi
python tools/unigram_entropy.py "$DATA/stdlib.zarr" --split validation
megatron-diffusion train --config examples/cpu_demo.yaml --run-dir "$RUN_DIR" --resume auto "$@"
python - "$RUN_DIR" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(f"{sys.argv[1]}/metrics.jsonl")]
val = [r for r in recs if "val_loss" in r]
if val:
    print(f"final validation loss (ELBO, nats/token): {val[-1]['val_loss']:.3f} at step {val[-1]['step']}")
PY
if megatron-diffusion sample --help >/dev/null 2>&1; then
  megatron-diffusion sample --checkpoint "$RUN_DIR" --max-new-tokens 64 --block-size 4 \
    --strategy threshold --threshold 0.9 \
    --prompt $'import os\n\n\ndef ' --prompt $'class Queue:\n    def __init__(self' || true
fi
