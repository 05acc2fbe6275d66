#!/usr/bin/env bash
# On-policy step reduction on the reference model (docs/onpolicy.md), from a fresh clone, CPU:
#   1. the block-diffusion CPT of examples/smollm2_cpt.sh (skipped when its checkpoint exists);
#   2. prompt sets from the interpreter's stdlib: documented functions' signatures and first
#      docstring lines; training files and held-out files apart;
#   3. the on-policy run (examples/smollm2_onpolicy.yaml: threshold 0.1, block 4, 4 prompts x
#      4 trajectories per step, model verifier = the frozen CPT model, k3 KL anchor);
#   4. onpolicy-eval of the model before and after on the held-out prompts, same settings
#      (temperature 1 as the on-policy run samples, and greedy).
#
#   bash examples/smollm2_onpolicy.sh      # resumable: a re-run skips what is done
set -euo pipefail
cd "$(dirname "$0")/.."
export DATA=${DATA:-runs/smollm2_data}
CPT=${CPT:-runs/smollm2_cpt}
RUN_DIR=${RUN_DIR:-runs/smollm2_onpolicy}
SECONDS=0
[ -d "$CPT/phase2-block4" ] || RUN_DIR=$CPT bash examples/smollm2_cpt.sh
mkdir -p "$RUN_DIR"
S=$(python -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
TRAIN_FILES=("$S"/json/*.py "$S/textwrap.py" "$S/shlex.py" "$S/fnmatch.py" "$S/colorsys.py"
             "$S/bisect.py" "$S/heapq.py" "$S/string.py" "$S/glob.py" "$S/posixpath.py")
HELD_FILES=("$S/calendar.py" "$S/keyword.py" "$S/genericpath.py" "$S/ntpath.py")
[ -f "$RUN_DIR/prompts_train.jsonl" ] || megatron-diffusion onpolicy-prompts --source "${TRAIN_FILES[@]}" \
  --limit 64 --max-chars 160 --out "$RUN_DIR/prompts_train.jsonl"
[ -f "$RUN_DIR/prompts_heldout.jsonl" ] || megatron-diffusion onpolicy-prompts --source "${HELD_FILES[@]}" \
  --limit 16 --max-chars 160 --out "$RUN_DIR/prompts_heldout.jsonl"
megatron-diffusion train --config examples/smollm2_onpolicy.yaml --run-dir "$RUN_DIR/train" --resume auto \
  --init-from "$CPT/phase2-block4" "data.blend=[[1.0, $DATA/stdlib.zarr]]" \
  "onpolicy.prompts=$RUN_DIR/prompts_train.jsonl"
echo "[smollm2_onpolicy] on-policy run: ${SECONDS}s"
EVAL=(--prompts "$RUN_DIR/prompts_heldout.jsonl" --verifier model --reference "$CPT/phase2-block4"
      --max-new-tokens 32 --strategy threshold --threshold 0.1)
for mode in sampled greedy; do  # temperature 1 (as the on-policy run samples, 2 per prompt) and greedy
  [ $mode = sampled ] && T=(--temperature 1.0 --samples 2) || T=(--temperature 0.0 --samples 1)
  [ -f "$RUN_DIR/eval_before_$mode.json" ] || megatron-diffusion onpolicy-eval \
    --checkpoint "$CPT/phase2-block4" "${EVAL[@]}" "${T[@]}" --out "$RUN_DIR/eval_before_$mode.json"
  megatron-diffusion onpolicy-eval --checkpoint "$RUN_DIR/train" "${EVAL[@]}" "${T[@]}" \
    --out "$RUN_DIR/eval_after_$mode.json"
done
echo "[smollm2_onpolicy] total: ${SECONDS}s"
