"""Evaluation: execution-based code benchmarks (HumanEval pass@k with decoding speed) and the
held-out quality report.

The model-independent half lives here: ``executor`` runs untrusted checks in a sandbox,
``humaneval`` builds the programs, post-processes completions and computes pass@k (the
``megatron-diffusion eval`` command is ``cli/eval.py``). ``quality`` is ``eval quality``:
held-out line completion (``line_completion``) with bootstrap intervals (``bootstrap``), AUP
(``aup``), the infill metrics (``infill``) and the secondary continuation accuracy
(``continuation``).
``lm_eval_model`` is the lm-evaluation-harness model (the ``[lmeval]`` extra), its
log-likelihoods ``likelihood``. See docs/evaluation.md.
"""
