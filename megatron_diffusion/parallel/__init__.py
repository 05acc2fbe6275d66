"""Process groups, the CPU runtime for megatron-core, and launcher (torchrun/SLURM) detection."""
