"""Seed Diffusion 3.2's trajectory distillation: search reveal orders with the model, store them.

``row_model`` turns a block-diffusion checkpoint and one packed data row into the ``logp_fn`` of
``sampling.trajectory``; ``trajectory_store`` writes the selected step maps beside the row's
tokens; ``megatron-diffusion distill-trajectories`` (``cli/distill_trajectories.py``) runs them.
docs/distillation.md.
"""
