#!/usr/bin/env bash
# On-policy step reduction with the execution verifier on the self-speculative CPT (issue 25,
# docs/BENCHMARKS.md "Issue 25: the speed stages on the long CPT"), then onpolicy-eval of the
# result on held-out tasks (examples/onpolicy_easy_heldout.jsonl) at greedy thresholds.
# Resumable: a re-run continues the training and skips finished evaluations.
#   CPT=runs/spec_cpt/checkpoints/iter_0000400 RUN_DIR=runs/spec_onpolicy_exec bash examples/smollm2_spec_onpolicy_exec.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export DATA=${DATA:-runs/smollm2_data}
CPT=${CPT:-runs/spec_cpt/checkpoints/iter_0000400}
RUN_DIR=${RUN_DIR:-runs/spec_onpolicy_exec}
SECONDS=0
megatron-diffusion train --config examples/smollm2_spec_onpolicy_exec.yaml --run-dir "$RUN_DIR/train" \
  --resume auto --init-from "$CPT" "data.blend=[[1.0, $DATA/stdlib.zarr]]"
echo "[smollm2_spec_onpolicy_exec] training: ${SECONDS}s"
for ck in "$CPT" "$RUN_DIR/train"; do
  name=$([ "$ck" = "$CPT" ] && echo before || echo after)
  for t in 0.9 0.5 0.3 0.1; do
    out="$RUN_DIR/heldout_${name}_t$t.json"
    paired=(); [ "$name" = after ] && paired=(--paired "$RUN_DIR/heldout_before_t$t.json")
    [ -f "$out" ] || megatron-diffusion onpolicy-eval --checkpoint "$ck" \
      --prompts examples/onpolicy_easy_heldout.jsonl --verifier execution --max-new-tokens 16 \
      --strategy threshold --threshold "$t" --temperature 0 --batch-size 8 "${paired[@]}" \
      --out "$out" > /dev/null
  done
done
echo "[smollm2_spec_onpolicy_exec] + evaluations: ${SECONDS}s"
