#!/usr/bin/env bash
# The real-model job: SmolLM2-135M from its GGUF -> a short block-diffusion CPT on stdlib code
# (examples/smollm2_cpt.sh: AR stage, then B=4 diffusion with the logit shift) -> parallel
# decoding, with a before/after quality report on held-out stdlib files the CPT never saw.
# Prints tokens per forward and the before/after figures; about 5 minutes on a quiet 2-core CPU
# (313 s measured; 13-15 minutes while other work shared the cores)
# (docs/BENCHMARKS.md, "SmolLM2 demo").
#
#   bash examples/smollm2_demo.sh          # resumable: a re-run skips what is done
set -euo pipefail
cd "$(dirname "$0")/.."
export DATA=${DATA:-runs/smollm2_data}
export RUN_DIR=${RUN_DIR:-runs/smollm2_demo}
SECONDS=0
bash examples/smollm2_cpt.sh "$@"
echo "[smollm2_demo] convert + CPT: ${SECONDS}s"
S=$(python -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
# packages outside the training corpus (examples/smollm2_cpt.sh INPUTS)
HELDOUT=("$S/wsgiref/headers.py" "$S/tomllib/_parser.py" "$S/zoneinfo/_common.py" "$S/html/parser.py")
# the settings of docs/BENCHMARKS.md "SmolLM2-135M quality", with lower thresholds (0.1, 0.05)
QUALITY=(--heldout "${HELDOUT[@]}" --prompts-per-file 4 --batch-size 8 --max-rows 16
         --block-size 4 --thresholds 0.9,0.5,0.1,0.05)
# (re-made when it predates the line-completion report)
if ! grep -qs '"line_completion"' "$RUN_DIR/quality_before.json"; then
  megatron-diffusion eval quality --checkpoint "$DATA/smollm2" "${QUALITY[@]}" \
    --out "$RUN_DIR/quality_before.json"
fi
megatron-diffusion eval quality --checkpoint "$RUN_DIR/stage2-block4" "${QUALITY[@]}" \
  --out "$RUN_DIR/quality_after.json"
echo "[smollm2_demo] + quality before/after: ${SECONDS}s"
megatron-diffusion sample --checkpoint "$RUN_DIR/stage2-block4" --prompts examples/demo_prompts.jsonl \
  --max-new-tokens 32 --block-size 4 --strategy threshold --threshold 0.1 \
  --out "$RUN_DIR/samples.jsonl"
python - "$RUN_DIR" <<'PY'
import json, sys
run = sys.argv[1]
for r in map(json.loads, open(f"{run}/samples.jsonl")):
    print("-" * 60)
    print(r["prompt"] + "\033[1m" + r["completion"] + "\033[0m")
    print(f"[{r['num_tokens']} tokens in {r['num_forwards']} forwards]")
b, a = (json.load(open(f"{run}/quality_{k}.json")) for k in ("before", "after"))
print("=" * 60)
print("held-out stdlib files never seen in training     before CPT   after CPT")
for m0, m1 in zip(b["masked"], a["masked"]):
    print(f"masked-token accuracy @{m0['mask_rate']:.2f}                     "
          f"{m0['accuracy']:9.3f}   {m1['accuracy']:9.3f}")
    print(f"masked-token CE (nats) @{m0['mask_rate']:.2f}                    "
          f"{m0['ce_nats']:9.3f}   {m1['ce_nats']:9.3f}")
nt0, nt1 = b.get("next_token"), a.get("next_token")
if nt0 and nt1:
    print(f"next-token NLL (nats)                            {nt0['nll_nats']:9.3f}   "
          f"{nt1['nll_nats']:9.3f}")
print("decode (B=4)      held-out line exact match % [95% interval], tok/forward: before | after")
for p0, p1 in zip(b["line_completion"]["decodes"], a["line_completion"]["decodes"]):
    cells = []
    for p in (p0, p1):
        em = p["exact_match"]
        cells.append(f"{100 * em['value']:5.1f} [{100 * em['lo']:5.1f}, {100 * em['hi']:5.1f}] "
                     f"{p['tokens_per_forward']['value']:5.2f}")
    print(f"  {p0['label']:<16} {cells[0]} | {cells[1]}")
print(f"before CPT: {b['line_completion']['claim']}")
print(f"after CPT:  {a['line_completion']['claim']}")
print("decode (B=4)      continuation accuracy (secondary), tok/forward: before | after")
c0, c1 = b["continuation"], a["continuation"]
for p0, p1 in zip([c0["ar_baseline"]] + c0["curve"], [c1["ar_baseline"]] + c1["curve"]):
    print(f"  {p0['label']:<16} {p0['accuracy']:6.3f} {p0['tokens_per_forward']:5.2f} | "
          f"{p1['accuracy']:6.3f} {p1['tokens_per_forward']:5.2f}")
PY
echo "[smollm2_demo] total: ${SECONDS}s"
