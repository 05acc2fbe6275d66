"""``python -m megatron_diffusion.cli``: the same as the ``megatron-diffusion`` command."""

import sys

from megatron_diffusion.cli import main

sys.exit(main())
