#!/usr/bin/env bash
# The GPU check (issue 18; docs/gpu.md): every GPU figure in one prepared run.
#   tools/gpu_check.sh RESULTS_DIR            on the H200: installs .whl/*.whl, runs all parts
#   tools/gpu_check.sh --dry-run RESULTS_DIR  on a CPU, tiny shapes (CI: tests/tools/test_gpu_check.py)
# Extra arguments go to `python3 -m tools.gpu_check` (--budget-s, --parts, --checkpoint).
# Writes RESULTS_DIR/results.json (rewritten after every part) and RESULTS_DIR/gpu_check.log.
set -uo pipefail
cd "$(dirname "$0")/.."
dry=()
if [ "${1:-}" = "--dry-run" ]; then dry=(--dry-run); shift; fi
if [ $# -lt 1 ]; then
  echo "tools/gpu_check.sh: error: RESULTS_DIR: missing (usage: tools/gpu_check.sh [--dry-run] RESULTS_DIR [options])" >&2
  exit 2
fi
out="$1"; shift
mkdir -p "$out"
py="${PYTHON:-python3}"
if [ ${#dry[@]} -eq 0 ] && compgen -G ".whl/*.whl" >/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { echo "gpu_check: wheel install failed" >&2; exit 3; }
  # the working tree first: its megatron_diffusion is the code that travelled with this call
  # (the carried wheel of it may be older); /tmp/site has the rest
  export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  # subprocesses that set their own PYTHONPATH (the tests' train runs) still find the wheels
  site_dir="$("$py" -c 'import site; print(site.getsitepackages()[0])')"
  echo /tmp/site > "$site_dir/gpu_check_site.pth" 2>/dev/null || echo "gpu_check: no .pth in $site_dir"
fi
export PYTHONUNBUFFERED=1
"$py" -m tools.gpu_check "${dry[@]}" "$out" "$@" 2>&1 | tee "$out/gpu_check.log"
