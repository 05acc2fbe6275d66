#!/usr/bin/env python
"""Checkpoint conversion from a source checkout, for scripts and SLURM jobs.

    python tools/convert_checkpoint.py hf-to-mcore --hf Seed-Coder-8B-Base --out ckpt/seed-coder \
        --tp 4 --pp 2 --add-mask-token
    python tools/convert_checkpoint.py gguf-to-mcore --gguf SmolLM2-135M-Instruct.Q4_1.gguf \
        --out ckpt/smollm2 --add-mask-token
    python tools/convert_checkpoint.py verify --hf Seed-Coder-8B-Base --checkpoint ckpt/seed-coder
    python tools/convert_checkpoint.py reshard --checkpoint ckpt/seed-coder --out ckpt/tp2 --tp 2 --pp 1
    python tools/convert_checkpoint.py mcore-to-hf --checkpoint runs/cpt --out export/

The same arguments and code as ``megatron-diffusion convert ...`` (docs/convert.md); exit status
0 on success, 1 when ``verify`` exceeds its tolerance, 2 on bad input.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_diffusion import cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli.main(["convert", *sys.argv[1:]]))
