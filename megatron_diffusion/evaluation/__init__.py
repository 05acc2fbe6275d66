"""Evaluation: execution-based code benchmarks (HumanEval pass@k with decoding speed).

The model-independent half lives here: ``executor`` runs untrusted checks in a sandbox,
``humaneval`` builds the programs, post-processes completions and computes pass@k, ``eval_cli``
is the ``megatron-diffusion eval`` command. See docs/evaluation.md.
"""
