"""Run a megatron-diffusion export with ``transformers`` and ``torch`` alone.

``convert mcore-to-hf`` copies this file into a block-diffusion export as ``block_diffusion.py``
and names its model classes in ``config.json`` ``auto_map``. It imports nothing from
megatron-diffusion, so an HF user can sample from the export (no network needed)::

    model = AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True,
                                                 dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(DIR)
    ids = model.diffusion_generate(tok.encode(prompt), max_new_tokens=64, threshold=0.9)
    print(tok.decode(ids))

``model.generate()`` would run the weights left to right with a causal mask, which is not how a
block-diffusion model was trained. This is our sampler's computation without the KV cache (same
block layout, attention mask, readout with or without the logit shift, and commit rule; read from
``config.json``'s ``"diffusion"`` block), one full forward per step. ``training_inputs`` builds
the training layout (``x_t (+) x0``) instead. The export's README.md and docs/convert.md
"Running a block-diffusion export with transformers" say more, including loading without
``trust_remote_code``.
"""

import torch
from transformers import LlamaForCausalLM, Qwen2ForCausalLM

try:  # transformers >= 4.51; a Llama/Qwen2 export runs on older versions too
    from transformers import Qwen3ForCausalLM
except ImportError:
    Qwen3ForCausalLM = None


def _diffusion(model) -> dict:
    block = getattr(model.config, "diffusion", None)
    if not isinstance(block, dict) or block.get("format") != "megatron-diffusion":
        raise ValueError("config.json has no megatron-diffusion 'diffusion' block")
    if block["attention_mode"] not in ("block", "causal"):
        raise ValueError(f"attention_mode {block['attention_mode']!r}: only block/causal models")
    return block


def clean_block_ids(prompt_len: int, total_len: int, block_size: int) -> torch.Tensor:
    """Block index of every position: prompt blocks from 0, generation blocks from the end of
    the prompt (the prompt's last block may be short)."""
    col = torch.arange(total_len)
    first_gen_block = -(-prompt_len // block_size)
    return torch.where(col < prompt_len, col // block_size,
                       first_gen_block + (col - prompt_len) // block_size)


def step_mask(block: dict, prompt_len: int, block_start: int, block_size: int, n: int,
              seq_end: int) -> torch.Tensor:
    """``[1, 1, n, n]`` bool (True = attend) for ``n`` positions, the current block at
    ``block_start``; positions ``>= seq_end`` (right padding) attend only themselves."""
    q, k = torch.arange(n)[:, None], torch.arange(n)[None, :]
    clean_q, clean_k = q < block_start, k < block_start
    if block["attention_mode"] == "block" and block.get("clean_stream") == "block_causal":
        ids = clean_block_ids(prompt_len, n, block_size)
        clean_ok = ids[None, :] <= ids[:, None]
    else:
        clean_ok = k <= q
    noisy_ok = torch.ones_like(clean_ok) if block["attention_mode"] == "block" else k <= q
    allowed = torch.where(clean_q, clean_k & clean_ok, clean_k | noisy_ok) & (k < seq_end)
    allowed = torch.where(q < seq_end, allowed, k == q)
    return allowed[None, None]


def training_inputs(x_t: torch.Tensor, x0: torch.Tensor, block_size: int,
                    clean_stream: str = "block_causal") -> dict:
    """Model inputs of the training layout (one document per row): ``x_t (+) x0`` ``[b, 2L]``,
    positions ``0..L-1`` twice, and the block-diffusion mask (docs/method.md 3)."""
    b, L = x_t.shape
    blk = torch.arange(L) // block_size
    bq, bk = torch.cat([blk, blk])[:, None], torch.cat([blk, blk])[None, :]
    idx = torch.arange(2 * L)
    cq, ck = (idx >= L)[:, None], (idx >= L)[None, :]
    clean_clean = (bq >= bk) if clean_stream == "block_causal" else (idx[None, :] <= idx[:, None])
    allowed = (~cq & ~ck & (bq == bk)) | (~cq & ck & (bq > bk)) | (cq & ck & clean_clean)
    positions = torch.arange(L).repeat(2)
    return {"input_ids": torch.cat([x_t, x0], dim=1), "position_ids": positions.expand(b, -1),
            "attention_mask": allowed.expand(b, 1, -1, -1)}


def _commit(block_tokens: torch.Tensor, logits_NV: torch.Tensor, mask_id: int,
            threshold: float | None) -> torch.Tensor:
    probs = torch.softmax(logits_NV.float(), dim=-1)
    conf, top1 = probs.max(dim=-1)
    masked = block_tokens == mask_id
    score = torch.where(masked, conf, torch.full_like(conf, -1.0))
    best = torch.zeros_like(masked)
    best[torch.sort(score, descending=True, stable=True).indices[0]] = True
    commit = masked & (best if threshold is None else (conf >= threshold) | best)
    return torch.where(commit, top1, block_tokens)


@torch.no_grad()
def generate(model, prompt_ids: list[int], *, max_new_tokens: int = 128,
             block_size: int | None = None, threshold: float | None = None,
             stop_token_ids: list[int] | None = None, pad_token_id: int | None = None
             ) -> list[int]:
    """New token ids after ``prompt_ids`` (cut after the first stop token; default
    ``default_stop_ids``)."""
    block = _diffusion(model)
    cfg = model.config
    B = block_size or (block["block_size"] if block["attention_mode"] == "block" else 1)
    mask_id, shift = block["mask_token_id"], int(bool(block["logit_shift"]))
    stops = stop_token_ids if stop_token_ids is not None else default_stop_ids(model)
    pad = pad_token_id if pad_token_id is not None else (cfg.pad_token_id or 0)
    device = next(model.parameters()).device
    P = len(prompt_ids)
    seq_end = P + min(max_new_tokens, cfg.max_position_embeddings - P)
    gen_end = P + -(-(seq_end - P) // B) * B
    seq = torch.full((gen_end,), pad, dtype=torch.long)
    seq[:P], seq[P:seq_end] = torch.tensor(prompt_ids), mask_id
    for start in range(P, seq_end, B):
        cols = torch.arange(start, start + B)
        while bool((seq[cols] == mask_id).any()):
            n = start + B
            out = model(input_ids=seq[None, :n].to(device),
                        position_ids=torch.arange(n, device=device)[None],
                        attention_mask=step_mask(block, P, start, B, n, seq_end).to(device))
            logits = out.logits[0, cols - shift].float().cpu()
            logits[:, mask_id] = float("-inf")
            seq[cols] = _commit(seq[cols], logits, mask_id, threshold)
            new = seq[cols]
            for i, t in enumerate(new.tolist()):
                if t == mask_id:
                    break
                if t in stops and start + i < seq_end:
                    return seq[P:start + i + 1].tolist()
    return seq[P:seq_end].tolist()


def default_stop_ids(model) -> list[int]:
    """Every ``eos_token_id`` of ``config.json`` and of ``generation_config.json`` (each an id or
    a list): an export's ``generation_config.json`` lists every stop id, its ``config.json`` the
    source model's own EOS (older exports: the document EOS, or the whole list)."""
    generation = model.generation_config
    ids = _as_list(model.config.eos_token_id)
    ids += _as_list(generation.eos_token_id if generation is not None else None)
    return list(dict.fromkeys(ids))


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


class _DiffusionGenerate:
    def diffusion_generate(self, prompt_ids: list[int], **kwargs) -> list[int]:
        """``generate(self, prompt_ids, **kwargs)``: block-diffusion decoding of this model.
        (``model.generate()`` is transformers' left-to-right decode, not how it was trained.)"""
        return generate(self, prompt_ids, **kwargs)


class BlockDiffusionLlamaForCausalLM(_DiffusionGenerate, LlamaForCausalLM):
    """A ``LlamaForCausalLM`` export as ``trust_remote_code`` loads it (``auto_map``)."""


class BlockDiffusionQwen2ForCausalLM(_DiffusionGenerate, Qwen2ForCausalLM):
    """A ``Qwen2ForCausalLM`` export as ``trust_remote_code`` loads it (``auto_map``)."""


if Qwen3ForCausalLM is not None:
    class BlockDiffusionQwen3ForCausalLM(_DiffusionGenerate, Qwen3ForCausalLM):
        """A ``Qwen3ForCausalLM`` export as ``trust_remote_code`` loads it (``auto_map``)."""
