"""megatron-diffusion: code diffusion language models trained on megatron-core.

The package reads in the order data flows through it:

    data -> corruption -> masks -> model -> loss -> training -> sampling -> convert

``layout`` (documents, blocks, positions of a packed row) and ``batch`` (the tensors a
loader hands the model) are the two contracts shared by every stage.
"""

__version__ = "0.1.0"
