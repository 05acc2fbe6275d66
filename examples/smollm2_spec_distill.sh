#!/usr/bin/env bash
# Trajectory distillation of the self-speculative CPT, measured with line completion (issue 25,
# docs/BENCHMARKS.md "Trajectory distillation of the long CPT"). Resumable: a re-run skips what
# is done. Needs the long CPT (examples/smollm2_spec_cpt.yaml) and its data.
#   CPT=runs/spec_cpt/checkpoints/iter_0000400 RUN_DIR=runs/spec_distill bash examples/smollm2_spec_distill.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export DATA=${DATA:-runs/smollm2_data}
CPT=${CPT:-runs/spec_cpt/checkpoints/iter_0000400}
RUN_DIR=${RUN_DIR:-runs/spec_distill}
ROWS=${ROWS:-16}
SECONDS=0
megatron-diffusion distill-trajectories --checkpoint "$CPT" --data "$DATA/stdlib.zarr" \
  --out "$RUN_DIR/orders" --rows "$ROWS" --candidates 2 --exact
echo "[smollm2_spec_distill] trajectories: ${SECONDS}s"
megatron-diffusion train --config examples/smollm2_spec_distill.yaml --run-dir "$RUN_DIR/train" \
  --resume auto --init-from "$CPT" "data.blend=[[1.0, $DATA/stdlib.zarr]]" \
  "data.trajectories=$RUN_DIR/orders"
echo "[smollm2_spec_distill] + training: ${SECONDS}s"
