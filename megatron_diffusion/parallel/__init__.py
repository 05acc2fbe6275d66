"""Running on many processes: launcher detection, run directories, preemption, SLURM glue.

``launch_env`` reads rank/world size/rendezvous from torchrun or SLURM (``hostlist`` expands
SLURM's node lists); ``run_dir`` keeps a run's directory and wandb id stable across requeues and
snapshots what ran; ``preemption`` turns SIGUSR2/SIGTERM into a checkpoint-and-requeue at a step
boundary; ``selftest`` is a cluster smoke test (``python -m megatron_diffusion.parallel.selftest``).
``megatron-diffusion submit`` (``cli/submit.py``) submits jobs through submitit. See docs/slurm.md.
"""
