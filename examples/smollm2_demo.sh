#!/usr/bin/env bash
# The real-model job: SmolLM2-135M from its GGUF -> a short self-speculative block-diffusion CPT
# on stdlib code (examples/smollm2_spec_cpt.yaml, shortened: B = 4 with the logit shift, a causal
# clean stream trained with the AR loss) -> held-out line completion before and after (exact
# match, edit similarity, agreement with the AR decode, 95% bootstrap intervals) for the AR
# decode, the block sampler and threshold decoding, and self-speculative decoding, whose output
# is checked here to be the CPT model's AR decode token for token. The samples it prints come
# from self-speculative decoding, so the AR rows of the table vouch for their quality.
# About 28-32 minutes on a shared 2-core CPU (README, "The main job: what to expect").
#
#   bash examples/smollm2_demo.sh          # resumable: a re-run skips what is done
set -euo pipefail
cd "$(dirname "$0")/.."
export DATA=${DATA:-runs/smollm2_data}
RUN_DIR=${RUN_DIR:-runs/smollm2_demo}
SECONDS=0
# the long recipe, shortened to fit a demo: 40 steps of 128-token rows (the recipe's 256 and
# 400 steps: docs/BENCHMARKS.md, "Self-speculative decoding and the long CPT"). The loss rises
# when the 5-step corruption warmup ends (more masks; `mask cap` leaves the log line then);
# `ar ce`, the clean stream's next-token CE, is the one that says the AR model is kept.
CONFIG=examples/smollm2_spec_cpt.yaml RUN_DIR="$RUN_DIR" bash examples/smollm2_cpt.sh \
  training.train_iters=40 data.seq_len=128 corruption.warmup_steps=5 training.save_interval=0 \
  training.keep_last=1 "$@"
echo "[smollm2_demo] convert + CPT: ${SECONDS}s"
S=$(python -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
# packages outside the training corpus (examples/smollm2_cpt.sh INPUTS)
HELDOUT=("$S/wsgiref/headers.py" "$S/tomllib/_parser.py" "$S/zoneinfo/_common.py" "$S/html/parser.py")
QUALITY=(--heldout "${HELDOUT[@]}" --lines 40 --context-tokens 256 --reference "$DATA/smollm2"
         --prompts-per-file 1 --max-rows 4 --batch-size 8 --block-size 4
         --thresholds 0.9,0.5,0.1)
if ! grep -qs '"line_completion"' "$RUN_DIR/quality_before.json"; then
  megatron-diffusion eval quality --checkpoint "$DATA/smollm2" "${QUALITY[@]}" \
    --out "$RUN_DIR/quality_before.json"
fi
megatron-diffusion eval quality --checkpoint "$RUN_DIR" "${QUALITY[@]}" --speculative 3 \
  --out "$RUN_DIR/quality_after.json"
echo "[smollm2_demo] + quality before/after: ${SECONDS}s"
for mode in ar spec; do
  knobs=(--ar-baseline)
  [ "$mode" = spec ] && knobs=(--strategy speculative --draft-len 3)
  megatron-diffusion sample --checkpoint "$RUN_DIR" --prompts examples/demo_prompts.jsonl \
    --max-new-tokens 48 --batch-size 1 "${knobs[@]}" --out "$RUN_DIR/samples_$mode.jsonl"
done
python - "$RUN_DIR" <<'PY'
import json, sys
run = sys.argv[1]
ar, spec = ([json.loads(x) for x in open(f"{run}/samples_{m}.jsonl")] for m in ("ar", "spec"))
bold, plain = ("\033[1m", "\033[0m") if sys.stdout.isatty() else ("", "")  # none in a log file
for r in spec:
    print("-" * 60)
    print(r["prompt"] + bold + r["completion"] + plain)
    print(f"[self-speculative: {r['num_tokens']} tokens in {r['num_forwards']} forwards]")
same = all(a["completion_ids"] == s["completion_ids"] for a, s in zip(ar, spec))
tok = lambda rs: sum(r["num_tokens"] for r in rs)
fwd = lambda rs: sum(r["num_forwards"] for r in rs)
sec = lambda rs: sum(r["seconds"] for r in rs)
print("=" * 72)
print(f"self-speculative decoding on the CPT model, batch 1, {len(spec)} prompts: output "
      f"{'IDENTICAL to' if same else 'DIFFERENT from (a bug!)'} its AR decode; "
      f"{tok(spec) / fwd(spec):.2f} tokens/forward; {tok(spec) / sec(spec):.1f} tok/s vs "
      f"{tok(ar) / sec(ar):.1f} for the AR decode (one run each, not interleaved)")
b, a = (json.load(open(f"{run}/quality_{k}.json")) for k in ("before", "after"))
lines = a["line_completion"]["num_prompts"]
print(f"held-out line completion ({lines} lines of files never trained on, 256-token context), "
      "95% intervals; tok/s on this machine (batch 8)")
print(f"  {'decode':<15} {'line exact match %':>31} {'edit sim':>13} {'AR':>5} "
      f"{'tok/fwd':>11} {'tok/s':>11}")
print(f"  {'':<15} {'before':>15} {'after':>15} {'before':>6} {'after':>6} {'agree':>5} "
      f"{'before':>5} {'after':>5} {'before':>5} {'after':>5}")
rows_b = {p["label"]: p for p in b["line_completion"]["decodes"]}
def em(x):
    if not x:
        return "-"
    e = x["exact_match"]
    return f"{100 * e['value']:4.1f} [{100 * e['lo']:.1f},{100 * e['hi']:.1f}]"
def fig(x, key, digits):
    return f"{x[key]['value']:.{digits}f}" if x and x.get(key) else "-"
for p in a["line_completion"]["decodes"]:
    q = rows_b.get(p["label"])
    print(f"  {p['label']:<15} {em(q):>15} {em(p):>15} {fig(q, 'edit_similarity', 3):>6} "
          f"{fig(p, 'edit_similarity', 3):>6} {fig(p, 'ar_line_agreement', 2):>5} "
          f"{fig(q, 'tokens_per_forward', 2):>5} {fig(p, 'tokens_per_forward', 2):>5} "
          f"{fig(q, 'tokens_per_second', 1):>5} {fig(p, 'tokens_per_second', 1):>5}")
    if p.get("mean_accepted_draft"):
        m = p["mean_accepted_draft"]
        print(f"  {'':<15} lossless (the AR decode's lines); {m['value']:.2f} drafts accepted per "
              "drafted forward; each forward feeds 20 tokens a row (the AR decode: 2), which a "
              "2-core CPU pays for and a GPU's decode forward mostly does not")
print(f"  after CPT: {a['line_completion']['claim']}")
PY
echo "[smollm2_demo] total: ${SECONDS}s"
