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
# a few samples from the trained model: block-wise parallel decoding with the exact KV cache
megatron-diffusion sample --checkpoint "$RUN_DIR" --prompts examples/demo_prompts.jsonl \
  --max-new-tokens 48 --block-size 4 --strategy threshold --threshold 0.9 \
  --out "$RUN_DIR/samples.jsonl"
python - "$RUN_DIR/samples.jsonl" <<'PY'
import json, sys
bold, plain = ("\033[1m", "\033[0m") if sys.stdout.isatty() else ("", "")  # none in a log file
for r in map(json.loads, open(sys.argv[1])):
    print("-" * 60)
    print(r["prompt"] + bold + r["completion"] + plain)
    print(f"[{r['num_tokens']} tokens in {r['num_forwards']} forwards]")
PY
