"""torchrun worker: ``reshard`` several checkpoints to TP=2, PP=2 in one launch (each rank
imports megatron once). Usage: reshard_worker.py SRC DST [SRC DST ...]"""

import sys

import torch.distributed as dist

from megatron_diffusion.convert.reshard import reshard


def main():
    pairs = sys.argv[1:]
    for src, dst in zip(pairs[::2], pairs[1::2]):
        reshard(src, dst, tensor_model_parallel_size=2, pipeline_model_parallel_size=2)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
