"""Block-wise parallel sampling (Seed Diffusion 3.4, docs/method.md 8); user docs: docs/sampling.md.

Reading order: ``config`` (every decoding setting) -> ``strategies`` (commit rules of one step)
-> ``masks`` (attention of clean context + each row's noisy block) -> ``kv_cache`` (the ragged
KV cache core attention writes to) -> ``backend`` (the model forward with that cache, TP logit
gather) -> ``sampler`` (the decode loop) ->
``result`` + ``api`` (text in, ``result.GenerationResult`` out) -> ``bench``. The commands are
``cli/sample.py`` and ``cli/bench_sampler.py``.
"""
