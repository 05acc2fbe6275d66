"""Seed Diffusion 3.2's trajectory distillation: search reveal orders with the model, store them.

``row_model`` turns a block-diffusion checkpoint and one packed data row into the ``logp_fn`` of
``sampling.trajectory``; ``trajectory_store`` writes the selected step maps beside the row's
tokens; ``distill_cli`` is ``megatron-diffusion distill-trajectories``. docs/distillation.md.
"""
