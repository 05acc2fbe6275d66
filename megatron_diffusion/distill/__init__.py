"""Seed Diffusion 3.2's trajectory distillation, in one place: search reveal orders, store them.

``orders`` is the maths of a block's reveal order (step maps, the ELBO of an order, candidate
orders, the exact best order); ``row_model`` turns a block-diffusion checkpoint and one packed
data row into the ``logp_fn`` the orders are scored with; ``search`` picks each block's order;
``store`` is the on-disk format, its writer (``TrajectoryStore``) and its reader
(``TrajectoryRows``, the training rows of ``data.trajectories``, handed to the data loader).
``megatron-diffusion distill-trajectories`` (``cli/distill_trajectories.py``) runs the search;
training on the orders is a corruption (``corruption.trajectory_fraction``, eq. 9, applied by
``corruption/corruptor.py``). docs/distillation.md.
"""
