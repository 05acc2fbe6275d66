"""Log-likelihood of a continuation after a context: what lm-evaluation-harness's
``loglikelihood`` asks of a model (``lm_eval_model``), for every kind of checkpoint.

* **Exact, for checkpoints with an AR readout** (``infill.has_ar_readout``):
  ``log p(y | x) = sum_j log p(y_j | x, y_<j)``, read from output ``i - 1`` of the clean sequence
  under a causal mask. ``is_greedy``: every ``y_j`` is the argmax of its position.
* **A lower bound, for diffusion checkpoints** (docs/method.md 2; MDLM/LLaDA): with each
  continuation token masked with probability ``t``, the context never masked,

      log p(y | x) >= E_{t ~ U(0,1)} [ (1/t) sum_{j masked} log p_theta(y_j | x, y_t) ],

  estimated with LLaDA's lower-variance form (Nie et al. 2025, eq. 6): ``k ~ U{1..n}`` tokens
  masked, weight ``n / k``, averaged over ``num_draws``. A bound plus Monte Carlo noise, never the
  likelihood; ``is_greedy`` is reported False. docs/evaluation.md "lm-evaluation-harness" says
  why the two expectations agree and what the bound means for task metrics.

``L`` is the row length (context + continuation), ``D`` the Monte Carlo draws of one forward.
"""

import torch

from megatron_diffusion.evaluation.infill import has_ar_readout, make_forward


def max_length(loaded) -> int:
    """Most tokens (context + continuation) one row may hold: the model's positions."""
    return loaded.config.model.max_position_embeddings


def fit_row(context: list[int], continuation: list[int], limit: int) -> list[int]:
    """The context cut from the left so that context + continuation fit ``limit`` tokens (at
    least one context token stays: the first continuation token is read from it)."""
    if not continuation or len(continuation) >= limit:
        raise ValueError(f"continuation of {len(continuation)} tokens: expected 1 to "
                         f"{limit - 1} (the model's max_position_embeddings is {limit})")
    if not context:
        raise ValueError("empty context: expected at least one token (lm-eval passes EOS)")
    return context[-(limit - len(continuation)):]


@torch.no_grad()
def ar_loglikelihood(loaded, requests: list[tuple[list[int], list[int]]],
                     batch_size: int = 8) -> list[tuple[float, bool]]:
    """``(log p(continuation | context), is_greedy)`` per ``(context, continuation)`` ids pair:
    exact, for a checkpoint with an AR readout; rows right-padded within a batch (a causal mask
    keeps padding out of every real position)."""
    from megatron_diffusion.masks.config import AttentionConfig
    from megatron_diffusion.model.inputs import attention_mask

    cfg = loaded.config
    if not has_ar_readout(cfg):
        raise ValueError(f"{cfg.attention.mode}-mode checkpoint without an AR readout: "
                         "use elbo_loglikelihood")
    causal = cfg.attention if cfg.attention.mode == "causal" else AttentionConfig(mode="causal")
    device = next(loaded.model.parameters()).device
    limit = max_length(loaded)
    out = []
    for first in range(0, len(requests), batch_size):
        pairs = [(fit_row(c, y, limit), y) for c, y in requests[first:first + batch_size]]
        L = max(len(c) + len(y) for c, y in pairs)
        tokens_BL = torch.zeros(len(pairs), L, dtype=torch.long)
        for b, (c, y) in enumerate(pairs):
            tokens_BL[b, :len(c) + len(y)] = torch.tensor(c + y)
        tokens_BL = tokens_BL.to(device)
        positions_BL = torch.arange(L, device=device).expand(len(pairs), L)
        mask = attention_mask(causal, torch.zeros_like(tokens_BL))
        logits_BLV = loaded.model(tokens_BL, positions_BL, mask).float()
        for b, (c, y) in enumerate(pairs):
            read_NV = torch.log_softmax(logits_BLV[b, len(c) - 1:len(c) - 1 + len(y)], dim=-1)
            targets_N = torch.tensor(y, device=device)
            logp = float(read_NV.gather(-1, targets_N[:, None]).sum())
            out.append((logp, bool((read_NV.argmax(-1) == targets_N).all())))
    return out


def elbo_masks(num_context: int, num_continuation: int, num_draws: int,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(masked_DL, weight_D)``: per draw, ``k ~ U{1..n}`` continuation positions masked
    uniformly at random (never a context position), and the weight ``n / k``."""
    n = num_continuation
    k_D = torch.randint(1, n + 1, (num_draws,), generator=generator)
    rank_DN = torch.argsort(torch.rand(num_draws, n, generator=generator), dim=-1)
    masked_DN = rank_DN < k_D[:, None]
    context_DL = torch.zeros(num_draws, num_context, dtype=torch.bool)
    return torch.cat([context_DL, masked_DN], dim=1), n / k_D.double()


def _draw_batch(row_L: torch.Tensor, masked_DL: torch.Tensor, cfg):
    """The ``DiffusionBatch`` of ``D`` masked copies of one row, in the checkpoint's layout."""
    from megatron_diffusion.batch import DiffusionBatch

    D, L = masked_DL.shape
    x0_DL = row_L.expand(D, L)
    xt_DL = torch.where(masked_DL, torch.full_like(x0_DL, cfg.model.mask_token_id), x0_DL)
    tokens = torch.cat([xt_DL, x0_DL], dim=1) if cfg.attention.mode == "block" else xt_DL
    return DiffusionBatch(tokens_BS=tokens, labels_BL=x0_DL.clone(), loss_weights_BL=masked_DL.float(),
                          document_ids_BL=torch.zeros(D, L, dtype=torch.long),
                          loss_mask_BL=masked_DL, t_BN=torch.zeros(D, 1),
                          num_edits_B=torch.zeros(D, dtype=torch.long))


@torch.no_grad()
def elbo_loglikelihood(loaded, context: list[int], continuation: list[int], *, num_draws: int,
                       seed: int = 0, batch_size: int = 8) -> float:
    """The masked-diffusion ELBO of ``continuation`` after ``context`` (module docstring): a
    lower bound on ``log p``, the mean of ``num_draws`` Monte Carlo draws seeded by ``seed``."""
    cfg = loaded.config
    if cfg.attention.mode == "causal":
        raise ValueError("a causal checkpoint reads shifted: use ar_loglikelihood")
    context = fit_row(context, continuation, max_length(loaded))
    row_L = torch.tensor(context + continuation)
    masked_DL, weight_D = elbo_masks(len(context), len(continuation), num_draws,
                                     torch.Generator().manual_seed(seed))
    forward = make_forward(loaded.model, cfg.attention)
    total = 0.0
    for first in range(0, num_draws, batch_size):
        masked = masked_DL[first:first + batch_size]
        logits_DLV = forward(_draw_batch(row_L, masked, cfg))[:, :row_L.shape[0]]
        logp_DL = torch.log_softmax(logits_DLV, dim=-1).gather(
            -1, row_L.expand(masked.shape[0], -1)[..., None])[..., 0]
        per_draw_D = torch.where(masked, logp_DL, 0.0).sum(dim=-1).double()
        total += float((weight_D[first:first + batch_size] * per_draw_D).sum())
    return total / num_draws
