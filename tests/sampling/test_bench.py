"""bench.measure_interleaved / paired_ratio: decoders run A, B, A, B, ...; each one's figures are
its median run; a ratio is the median of the per-pair ratios, with its spread (fake clock and
fake decoders: the timings are hand-written)."""

from types import SimpleNamespace

import pytest

from megatron_diffusion.sampling import bench
from megatron_diffusion.sampling.sampler import Completion

PROMPTS = [[1, 2], [3, 4]]  # each decode: 2 prompts x 5 tokens = 10 tokens


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_decoder(name: str, walls: list[float], clock: FakeClock, log: list[str]):
    """An ``HFGenerate``-like decoder whose n-th decode takes ``walls[n]`` fake seconds."""
    decoder = SimpleNamespace(num_model_calls=0, batch_size=2, max_new_tokens=5,
                              model=SimpleNamespace(device="cpu"))

    def generate(prompts):
        clock.now += walls[len([n for n in log if n == name])]
        log.append(name)
        decoder.num_model_calls += 5
        return [Completion(tokens=[7] * 5, num_forwards=5, seconds=0.0, stopped_at_eos=False,
                           step_map=list(range(5))) for _ in prompts]

    decoder.generate = generate
    return decoder


def _measure(walls_a, walls_b):
    clock, log = FakeClock(), []
    decoders = {"a": fake_decoder("a", walls_a, clock, log),
                "b": fake_decoder("b", walls_b, clock, log)}
    out = bench.measure_interleaved(decoders, PROMPTS, warmup=False, repeats=len(walls_a),
                                    clock=clock)
    return out, log


def test_runs_interleave_and_each_figure_is_the_median_run():
    out, log = _measure([1.0, 4.0, 2.0], [2.0, 2.0, 5.0])
    assert log == ["a", "b"] * 3
    assert out["a"]["wall_seconds_each"] == pytest.approx([1.0, 4.0, 2.0])
    assert out["a"]["tokens_per_second_each"] == pytest.approx([10.0, 2.5, 5.0])
    assert out["a"]["wall_seconds"] == pytest.approx(2.0)
    assert out["a"]["tokens_per_second"] == pytest.approx(5.0)  # the median run, not the fastest
    assert out["b"]["wall_seconds"] == pytest.approx(2.0)
    assert out["a"]["num_model_calls"] == 5  # one decode's calls, not the sum of the repeats


def test_ratio_is_the_median_of_pairs_not_of_fastest_runs():
    # identical decoders under changing load, a quiet moment during a's first run: the fastest
    # runs give a 3x "speedup"; the pairs (run back to back) agree on 1x but for that one
    out, _ = _measure([1.0, 3.0, 3.1, 3.2], [3.0, 3.0, 3.1, 3.2])
    fastest = max(out["a"]["tokens_per_second_each"]) / max(out["b"]["tokens_per_second_each"])
    assert fastest == pytest.approx(3.0)
    ratio = bench.paired_ratio(out["a"], out["b"])
    assert ratio["median"] == pytest.approx(1.0)
    assert ratio["each"] == pytest.approx([3.0, 1.0, 1.0, 1.0])
    assert (ratio["min"], ratio["max"]) == pytest.approx((1.0, 3.0))


def test_even_number_of_pairs_takes_the_middle_two():
    out, _ = _measure([1.0, 1.0], [2.0, 4.0])  # a over b: 2x and 4x
    assert bench.paired_ratio(out["a"], out["b"])["median"] == pytest.approx(3.0)
