"""Infill metrics for models too small for pass@k: masked-token accuracy and the ELBO.

Infill accuracy and cross entropy at fixed mask rates (in block mode, the training-time block
forward), the ELBO in bits per token (the training objective with its own corruption: an upper
bound on the NLL), and, where the checkpoint has an AR readout (``has_ar_readout``), next-token
NLL and accuracy of the clean row, read shifted. A ``model.logit_shift`` checkpoint is scored as
it was trained (``loss_kwargs_for``). ``masked_metrics`` and ``next_token_metrics`` are shared with
``eval quality``; the corruptions come from ``corruption/``, as for the trainer's periodic infill
evaluation. Used by ``megatron-diffusion eval infill``; docs/evaluation.md "Infilling" defines
each figure.
"""

import json
import math
from pathlib import Path

import torch

from megatron_diffusion.corruption.factory import (CleanBatcher, eval_corruption_config,
                                                   make_corruptor)
from megatron_diffusion.corruption.fixed_rate import FixedRateMasking
from megatron_diffusion.errors import UsageError
from megatron_diffusion.fileio import write_text_atomic
from megatron_diffusion.progress import Progress

DEFAULT_RATES = (0.15, 0.3, 0.5, 0.7, 0.9)


def parse_rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--mask-rates: {text!r} is not a comma-separated list of numbers") from None
    if not rates or any(not 0 < r <= 1 for r in rates):
        raise UsageError(f"--mask-rates: got {text!r}, expected rates in (0, 1]")
    return rates


def _rows_from_file(path: Path, tokenizer_path: str, seq_len: int, eos_id: int) -> torch.Tensor:
    from megatron_diffusion.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_path)
    if path.suffix == ".jsonl":
        texts = [json.loads(line).get("text", "") for line in path.read_text().splitlines() if line.strip()]
    else:
        texts = [path.read_text(encoding="utf-8", errors="replace")]
    ids: list[int] = []
    for t in texts:
        ids += tok.tokenizer.encode(t).ids + [eos_id]
    n = len(ids) // seq_len
    if n == 0:
        raise UsageError(f"--data: {path} has {len(ids)} tokens, fewer than one row of {seq_len}")
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


def evaluate_rows(forward, rows_BL: torch.Tensor, corrupt_fn, *, seed: int, repeats: int = 1,
                  batch_size: int = 8, loss_cfg=None, loss_kwargs: dict | None = None):
    """Mean (per-token loss, ce at loss positions, accuracy) of ``forward(batch) -> logits``.

    ``loss_cfg``/``loss_kwargs`` go to ``diffusion_loss`` (default: the diffusion objective, no
    shift; ``loss_kwargs_for(cfg)`` gives a checkpoint's own readout)."""
    from megatron_diffusion.loss.config import LossConfig
    from megatron_diffusion.loss.elbo import diffusion_loss

    loss_cfg = loss_cfg or LossConfig()
    g = torch.Generator().manual_seed(seed)
    tot = torch.zeros(5, dtype=torch.float64)
    for _ in range(repeats):
        for i in range(0, rows_BL.shape[0], batch_size):
            x0 = rows_BL[i:i + batch_size]
            doc = torch.zeros_like(x0)
            batch = corrupt_fn(x0, doc, step=0, generator=g)
            with torch.no_grad():
                logits = forward(batch)
                loss_sum, n, m = diffusion_loss(logits, batch, loss_cfg, **(loss_kwargs or {}))
            tot += torch.tensor([loss_sum.item(), float(n), m["ce_sum"].item(),
                                 m["ce_count"].item(), m["correct"].item()], dtype=torch.float64)
    loss_sum, n, ce_sum, ce_count, correct = tot.tolist()
    return loss_sum / max(n, 1), ce_sum / max(ce_count, 1), correct / max(ce_count, 1)


def reads_shifted(cfg) -> bool:
    """Output ``i - 1`` predicts token ``i``: ``model.logit_shift`` (a converted AR checkpoint,
    shifted block CPT) or an AR-objective checkpoint (the sampler's rule, ``ModelRules``)."""
    return bool(cfg.model.logit_shift or cfg.loss.objective == "ar")


def loss_kwargs_for(cfg) -> dict:
    """``diffusion_loss`` keywords that read a checkpoint's outputs as it was trained
    (``reads_shifted``); the block-mode shift also needs the block layout."""
    if not reads_shifted(cfg):
        return {}
    if cfg.attention.mode == "block":
        return {"logit_shift": True, "block_size": cfg.attention.block_size,
                "visibility": cfg.attention.visibility}
    return {"logit_shift": True}


def has_ar_readout(cfg) -> bool:
    """Whether output ``i - 1`` of the clean sequence under a causal mask predicts token ``i``:
    a causal / AR-objective checkpoint, or one trained with the logit shift (its AR baseline
    decode, block size 1, reads exactly this)."""
    return cfg.attention.mode == "causal" or reads_shifted(cfg)


def make_forward(model, attn):
    """``forward(batch) -> fp32 logits on the CPU`` of ``model`` under attention ``attn``."""
    from megatron_diffusion.model.inputs import model_inputs

    device = next(model.parameters()).device

    def forward(batch):
        b = batch.to(device)
        return model(*model_inputs(b, attn)).float().cpu()

    return forward


def masked_metrics(model, cfg, rows_BL: torch.Tensor, rates, seed: int = 1234) -> list[dict]:
    """Masked-token accuracy and cross entropy at each fixed mask rate, in the checkpoint's own
    layout and readout (a causal checkpoint: masked input, causal mask, shifted readout)."""
    attn = cfg.attention
    block = attn.block_size if attn.mode == "block" else None
    forward = make_forward(model, attn)
    out = []
    for r in rates:
        fn = FixedRateMasking(r, mask_token_id=cfg.model.mask_token_id, block_size=block,
                              visibility=attn.visibility).corrupt
        _, ce, acc = evaluate_rows(forward, rows_BL, fn, seed=seed, loss_kwargs=loss_kwargs_for(cfg))
        out.append({"mask_rate": r, "accuracy": acc, "ce_nats": ce})
    return out


def next_token_metrics(model, cfg, rows_BL: torch.Tensor) -> dict | None:
    """Next-token accuracy and NLL (nats) of the clean rows under a causal mask, read shifted;
    None for a checkpoint without an AR readout (``has_ar_readout``)."""
    from megatron_diffusion.loss.config import LossConfig
    from megatron_diffusion.masks.config import AttentionConfig

    if not has_ar_readout(cfg):
        return None
    causal = cfg.attention if cfg.attention.mode == "causal" else AttentionConfig(mode="causal")
    _, nll, acc = evaluate_rows(make_forward(model, causal), rows_BL, CleanBatcher().corrupt, seed=0,
                                loss_cfg=LossConfig(objective="ar"))
    return {"accuracy": acc, "nll_nats": nll, "nll_bits": nll / math.log(2)}


def heldout_rows(data: Path, loaded, seq_len: int, max_rows: int) -> torch.Tensor:
    """Up to ``max_rows`` rows of ``seq_len`` held-out tokens: a store's validation split, or a
    jsonl / text file encoded with the checkpoint's tokenizer (documents joined by EOS)."""
    if (data / "zarr.json").is_file():
        from megatron_diffusion.data.store import TokenStore

        store = TokenStore(data)
        store.check_compatible(vocab_size=loaded.config.model.vocab_size,
                               tokenizer_hash=loaded.meta.get("tokenizer_hash"))
        offsets, split = store.read_doc_array("doc_offsets"), store.read_doc_array("split")
        ids: list[int] = []
        for d in torch.nonzero(torch.as_tensor(split) == 1).flatten().tolist():
            ids += store.read_tokens(int(offsets[d]), int(offsets[d + 1])).tolist()
            if len(ids) >= max_rows * seq_len:
                break
        if len(ids) < seq_len:
            raise UsageError(f"--data: store {data} has fewer than {seq_len} validation tokens")
        n = min(max_rows, len(ids) // seq_len)
        return torch.tensor(ids[: n * seq_len]).view(n, seq_len)
    if loaded.tokenizer_path is None:
        raise UsageError(f"--checkpoint: {loaded.path} has no tokenizer.json to encode {data}")
    from megatron_diffusion.data.tokenizer import load_tokenizer

    eos = load_tokenizer(loaded.tokenizer_path).eos_id
    return _rows_from_file(data, loaded.tokenizer_path, seq_len, eos)[:max_rows]


def run_infill(args) -> int:
    from megatron_diffusion.loading.trained import load_model

    rates = parse_rates(args.mask_rates) if isinstance(args.mask_rates, str) else list(args.mask_rates)
    data = Path(args.data)
    if not data.exists():
        raise UsageError(f"--data: {data} does not exist")
    loaded = load_model(args.checkpoint)
    cfg, model = loaded.config, loaded.model
    attn = cfg.attention
    L = cfg.data.seq_len
    rows = heldout_rows(data, loaded, L, getattr(args, "max_rows", 64) or 64)
    block = attn.block_size if attn.mode == "block" else None
    report = {"checkpoint": str(loaded.path), "step": loaded.meta.get("step"), "data": str(data),
              "rows": int(rows.shape[0]), "seq_len": L, "attention_mode": attn.mode,
              "block_size": block, "logit_shift": cfg.model.logit_shift, "infill": []}
    bar = Progress(3, "eval infill", unit="part")  # masked metrics, ELBO, AR NLL
    if attn.mode == "causal" and not reads_shifted(cfg):
        report["infill_note"] = "causal checkpoint: masked infill is not its task; see ar_nll"
    else:
        report["infill"] = masked_metrics(model, cfg, rows, rates)
    bar.update()
    if attn.mode != "causal":
        # the ELBO's own process: mask stage only, so no edit draws random tokens
        corruptor = make_corruptor(eval_corruption_config(cfg), vocab_size=cfg.model.vocab_size,
                                   special_ids={cfg.model.mask_token_id})
        elbo, _, _ = evaluate_rows(make_forward(model, attn), rows, corruptor.corrupt, seed=4321,
                                   repeats=4, loss_kwargs=loss_kwargs_for(cfg))
        report["elbo_bits_per_token"] = elbo / math.log(2)
    bar.update()
    ar = next_token_metrics(model, cfg, rows)
    bar.update()
    bar.close()
    report["ar_nll_bits_per_token"] = ar and ar["nll_bits"]
    report["next_token_accuracy"] = ar and ar["accuracy"]
    if ar is None:
        report["ar_note"] = (f"{attn.mode}-mode checkpoint without a causal AR readout "
                             "(output i predicts token i); no AR likelihood")
    _print_report(report)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "infill.json", json.dumps(report, indent=2))
    return 0


def _print_report(r: dict) -> None:
    print(f"checkpoint {r['checkpoint']} (step {r['step']}), {r['rows']} rows x {r['seq_len']} "
          f"tokens from {r['data']}, mode {r['attention_mode']}")
    for row in r["infill"]:
        print(f"  mask rate {row['mask_rate']:.2f}: infill accuracy {row['accuracy']:.3f}, "
              f"ce {row['ce_nats']:.3f} nats")
    if "elbo_bits_per_token" in r:
        print(f"  ELBO: {r['elbo_bits_per_token']:.3f} bits/token")
    ar = r.get("ar_nll_bits_per_token")
    print(f"  AR NLL: {ar:.3f} bits/token" if ar is not None else f"  AR: {r.get('ar_note')}")
