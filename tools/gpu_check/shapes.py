"""Every shape the check measures, for the H200 run and for the CPU dry run (``--dry-run``).

Models (``ModelConfig`` fields): SmolLM2-135M's shape (the project's reference model: 30 layers,
hidden 576, GQA 9/3, SwiGLU 1536, vocabulary 49152 + [MASK], tied embeddings, RoPE 1e5) and the
~1.1B config of ``examples/llama_1b_tp2.yaml`` (16 layers, hidden 2048, GQA 32/8, SwiGLU 5632,
untied; vocabulary 32000 + [MASK] here, the example takes its own from the data store). The dry
run uses a 2-layer, 64-wide model with the same structure.
"""

from dataclasses import dataclass

SMOLLM2_135M = dict(num_layers=30, hidden_size=576, num_attention_heads=9, num_query_groups=3,
                    ffn_hidden_size=1536, vocab_size=49153, mask_token_id=49152,
                    rotary_base=100000.0, norm_epsilon=1e-5,
                    untie_embeddings_and_output_weights=False, max_position_embeddings=8192)
LLAMA_1B = dict(num_layers=16, hidden_size=2048, num_attention_heads=32, num_query_groups=8,
                ffn_hidden_size=5632, vocab_size=32001, mask_token_id=32000, rotary_base=500000.0,
                untie_embeddings_and_output_weights=True, max_position_embeddings=8192)
TINY = dict(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2,
            ffn_hidden_size=128, vocab_size=257, mask_token_id=256, make_vocab_size_divisible_by=64,
            untie_embeddings_and_output_weights=False, max_position_embeddings=256)


@dataclass(frozen=True)
class Shapes:
    models: dict
    """name -> ModelConfig fields, for the training part."""
    seq_lens: tuple
    """Clean tokens per row ``L`` (block mode feeds ``2L``)."""
    tokens_per_step: int
    """Clean tokens per optimizer step; rows = tokens_per_step // L."""
    train_warmup: int
    train_steps: int
    attention_heads: tuple
    """(query heads, key/value heads, head dim) of the attention kernel part."""
    attention_rows: int
    repeats: int
    """Timed repetitions of a kernel (median reported)."""
    sampler_model: dict
    sampler_batches: tuple
    max_new_tokens: int
    prompt_len: int
    matmul_n: int
    copy_bytes: int
    cpt_steps: int
    cpt_min_s: float
    """Seconds that must be left for the CPT part to start."""


GPU = Shapes(models={"llama-1b": LLAMA_1B, "smollm2-135m": SMOLLM2_135M}, seq_lens=(2048, 8192),
             tokens_per_step=16384, train_warmup=2, train_steps=3,
             attention_heads=(32, 8, 64), attention_rows=2, repeats=10,
             sampler_model=SMOLLM2_135M, sampler_batches=(1, 32), max_new_tokens=128,
             prompt_len=64, matmul_n=8192, copy_bytes=2 << 30, cpt_steps=60, cpt_min_s=50.0)
DRY = Shapes(models={"tiny": TINY}, seq_lens=(16, 32), tokens_per_step=64, train_warmup=1,
             train_steps=1, attention_heads=(4, 2, 16), attention_rows=2, repeats=2,
             sampler_model=TINY, sampler_batches=(1, 4), max_new_tokens=8, prompt_len=8,
             matmul_n=128, copy_bytes=1 << 22, cpt_steps=2, cpt_min_s=0.0)


def shapes_for(dry_run: bool) -> Shapes:
    return DRY if dry_run else GPU
