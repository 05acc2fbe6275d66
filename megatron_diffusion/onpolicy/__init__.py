"""Seed Diffusion 3.3's on-policy step reduction (docs/onpolicy.md), in pipeline order.

``prompts`` reads and writes the prompt-set file (HumanEval-style JSON lines); ``verifiers``
scores a completion (unit tests in the evaluation sandbox, or the likelihood under a frozen
reference checkpoint); ``objective`` is the maths: the dense step surrogate of eq. 11, the
reward, group-relative advantages, the policy-gradient loss with the k3 KL anchor; ``rows``
turns a sampled trajectory into training rows whose logits are the sampler's; ``loss`` runs the
loss through megatron's schedule; ``rollout`` samples and scores trajectories and gives their
figures; ``source`` is the ``onpolicy`` step source of the trainer; ``config`` its run-config
section.
"""
