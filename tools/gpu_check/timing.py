"""Timing on either device: CUDA events around the region on GPU, ``perf_counter`` on CPU;
warm-up first, the median of ``reps`` timed runs returned in seconds."""

import statistics
import time

import torch


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_once(fn) -> float:
    if torch.cuda.is_available():
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_median(fn, reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    synchronize()
    return statistics.median(time_once(fn) for _ in range(reps))


def peak_memory_reset() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
