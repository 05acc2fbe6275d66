"""Seed Diffusion 3.3's on-policy step reduction: the pieces the ``onpolicy`` trainer stage uses.

``prompts`` reads and writes the prompt-set file (HumanEval-style JSON lines); ``verifiers``
scores a completion (unit tests in the evaluation sandbox, or the likelihood under a frozen
reference checkpoint); ``objective`` is the maths: the dense step surrogate of eq. 11, the
reward, group-relative advantages and the policy-gradient loss with a KL anchor.
docs/onpolicy.md. The trainer stage itself is not built yet.
"""
