"""The training loss: masked-diffusion ELBO, edit-stage all-position loss, optional AR loss.

``config`` holds ``LossConfig`` (no megatron import, so the run config loads without it);
``elbo`` holds the loss itself on megatron's vocabulary-parallel cross entropy, and
``shift_sources``, the one definition of which output predicts which token under the logit
shift. Pipeline position: model -> loss -> training.
"""
