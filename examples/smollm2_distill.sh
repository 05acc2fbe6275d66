#!/usr/bin/env bash
# Trajectory distillation on the reference model (docs/distillation.md), from a fresh clone, CPU:
#   1. the block-diffusion CPT of examples/smollm2_cpt.sh (skipped when its checkpoint exists);
#   2. distill-trajectories: each block's reveal order searched on ROWS training rows
#      (greedy + Gumbel candidates + left to right, and the exact best order, B = 4);
#   3. train on them (examples/smollm2_distill.yaml: half eq. 9, half ELBO), from the CPT model;
#   4. eval quality of both models on held-out stdlib files at the same thresholds.
#
#   bash examples/smollm2_distill.sh      # resumable: a re-run skips what is done
set -euo pipefail
cd "$(dirname "$0")/.."
export DATA=${DATA:-runs/smollm2_data}
CPT=${CPT:-runs/smollm2_cpt}
RUN_DIR=${RUN_DIR:-runs/smollm2_distill}
ROWS=${ROWS:-16}
SECONDS=0
[ -d "$CPT/phase2-block4" ] || RUN_DIR=$CPT bash examples/smollm2_cpt.sh
echo "[smollm2_distill] CPT model: ${SECONDS}s"
megatron-diffusion distill-trajectories --checkpoint "$CPT/phase2-block4" --data "$DATA/stdlib.zarr" \
  --out "$RUN_DIR/orders" --rows "$ROWS" --candidates 2 --exact
echo "[smollm2_distill] + trajectories: ${SECONDS}s"
megatron-diffusion train --config examples/smollm2_distill.yaml --run-dir "$RUN_DIR/train" --resume auto \
  --init-from "$CPT/phase2-block4" "data.blend=[[1.0, $DATA/stdlib.zarr]]" "data.trajectories=$RUN_DIR/orders"
echo "[smollm2_distill] + distillation training: ${SECONDS}s"
S=$(python -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
HELDOUT=("$S/wsgiref/headers.py" "$S/tomllib/_parser.py" "$S/zoneinfo/_common.py" "$S/html/parser.py")
QUALITY=(--heldout "${HELDOUT[@]}" --prompts-per-file 4 --batch-size 8 --max-rows 16
         --block-size 4 --thresholds 0.9,0.5,0.1,0.05)
[ -f "$RUN_DIR/quality_cpt.json" ] || megatron-diffusion eval quality --checkpoint "$CPT/phase2-block4" \
  "${QUALITY[@]}" --out "$RUN_DIR/quality_cpt.json"
megatron-diffusion eval quality --checkpoint "$RUN_DIR/train" "${QUALITY[@]}" \
  --out "$RUN_DIR/quality_distilled.json"
echo "[smollm2_distill] total: ${SECONDS}s"
