"""megatron-diffusion: code diffusion language models trained on megatron-core.

The package reads in the order data flows through it:

    data -> corruption -> masks -> model -> loss -> distill -> config -> training -> sampling
    -> convert -> loading -> evaluation -> onpolicy -> cli

Each subpackage is one level of that order and imports only its own level and earlier ones
(``tests/test_imports.py``). ``layout`` (documents, blocks, positions of a packed row) and
``batch`` (the tensors a loader hands the model) are the two contracts shared by every level.
"""

__version__ = "0.1.0"
