"""The training loss: masked-diffusion ELBO, edit-stage all-position loss, optional AR loss.

``config`` holds ``LossConfig`` (no megatron import, so the run config loads without it);
``readout`` says which model output predicts which token (``shift_sources``, the logit shift's
one definition) and which outputs need logits at all; ``elbo`` sums the weighted cross entropies
on megatron's vocabulary-parallel kernel. Pipeline position: model -> loss -> training.
"""
