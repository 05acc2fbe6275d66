"""Line-level code completion on held-out files (CodeXGLUE's line-level task, Lu et al. 2021,
"CodeXGLUE", section 3.3: exact match and edit similarity of the next line).

``pick_lines`` chooses eligible lines of each file with a seeded RNG; the prompt is the text
before the line, cut from the *file's own tokenization* at the token boundary after the previous
newline (byte-level BPE merges a newline with the next line's indentation, so the prompt's last
token may carry some of the line's leading whitespace: ``LinePrompt.line_prefix``). Decoding
stops at the first newline (every id whose text contains one is a stop token). Per prompt:
``exact_match`` (and ``exact_match_ws``), ``edit_similarity``, agreement with the AR decode of the
same checkpoint, ``distinct_tokens`` and ``reference_nll`` under a reference checkpoint's AR
readout. docs/evaluation.md "Quality report" defines each figure and says why the prompt is cut
that way.
"""

import bisect
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_diffusion.errors import UsageError

MIN_CONTEXT_TOKENS = 16
"""A line needs at least this many tokens of text before it to be chosen."""


@dataclass(frozen=True)
class LinePrompt:
    """One line to complete."""

    file: str
    line_number: int
    """1-based, as an editor shows it."""
    prompt_ids: list[int]
    true_line: str
    line_prefix: str = ""
    """Leading whitespace of the line already in the prompt's last token (see above)."""


def eligible(line: str) -> bool:
    """Not blank and not a comment-only line."""
    text = line.strip()
    return bool(text) and not text.startswith("#")


def split_quota(num_lines: int, num_files: int) -> list[int]:
    """Lines per file: as even as possible, the first ``num_lines % num_files`` files one more."""
    return [num_lines // num_files + (k < num_lines % num_files) for k in range(num_files)]


def line_prompt(path: Path, text: str, encoding, token_starts: list[int], line_start: int,
                line_number: int, context_tokens: int) -> LinePrompt | None:
    """The prompt of the line starting at character ``line_start`` of ``text`` (tokenized as
    ``encoding``, whose tokens start at ``token_starts``), or None if not eligible."""
    num = bisect.bisect_left(token_starts, line_start)  # tokens that start before the line
    prefix = text[line_start:encoding.offsets[num - 1][1]] if num else ""
    if num < MIN_CONTEXT_TOKENS or prefix.strip() or "\n" in prefix:
        return None
    line = text[line_start:].split("\n", 1)[0]
    return LinePrompt(str(path), line_number, encoding.ids[max(num - context_tokens, 0):num], line, prefix)


def pick_lines(tokenizer, files: list[Path], num_lines: int, context_tokens: int,
               seed: int) -> list[LinePrompt]:
    """The prompts of the module docstring, file by file."""
    rng = random.Random(seed)
    out = []
    for path, quota in zip(files, split_quota(num_lines, len(files))):
        text = path.read_text(encoding="utf-8", errors="replace")
        encoding = tokenizer.tokenizer.encode(text, add_special_tokens=False)
        token_starts = [start for start, _ in encoding.offsets]
        lines = text.split("\n")
        starts = [0]
        for line in lines[:-1]:
            starts.append(starts[-1] + len(line) + 1)
        candidates = [i for i, line in enumerate(lines) if i > 0 and eligible(line)]
        rng.shuffle(candidates)
        chosen = []
        for i in candidates:
            if len(chosen) == quota:
                break
            p = line_prompt(path, text, encoding, token_starts, starts[i], i + 1, context_tokens)
            if p is not None:
                chosen.append(p)
        if len(chosen) < quota:
            raise UsageError(f"--heldout: {path} has {len(chosen)} eligible lines (not blank, not a "
                             f"comment, >= {MIN_CONTEXT_TOKENS} tokens before them), fewer than its "
                             f"share {quota} of --lines (lower --lines or add files)")
        out += sorted(chosen, key=lambda p: p.line_number)
    return out


def newline_token_ids(tokenizer) -> tuple[int, ...]:
    """Every id whose decoded text contains a newline."""
    return tuple(i for i in range(tokenizer.vocab_size) if "\n" in tokenizer.decode([i]))


def completion_line(tokenizer, token_ids: list[int], checkpoint_stops) -> str:
    """The generated line: the text without a final checkpoint stop token, cut at ``"\\n"``."""
    ids = token_ids[:-1] if token_ids and token_ids[-1] in checkpoint_stops else token_ids
    return tokenizer.decode(ids).split("\n", 1)[0]


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character each)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def edit_similarity(generated: str, true: str) -> float:
    """``1 - levenshtein / max(len)`` of the stripped lines; 1.0 for two empty lines."""
    a, b = generated.strip(), true.strip()
    longest = max(len(a), len(b))
    return 1.0 - levenshtein(a, b) / longest if longest else 1.0


def exact_match(generated: str, true: str) -> bool:
    return generated.strip() == true.strip()


def exact_match_ws(generated: str, true: str) -> bool:
    """Equal after collapsing whitespace runs (spacing and indentation forgiven)."""
    return generated.split() == true.split()


def token_agreement(tokens: list[int], ar_tokens: list[int]) -> float:
    """Fraction of the AR completion's positions this completion reproduces."""
    if not ar_tokens:
        return float(not tokens)
    return sum(a == b for a, b in zip(tokens, ar_tokens)) / len(ar_tokens)


def distinct_tokens(tokens: list[int]) -> float:
    """Share of distinct ids (1: no id repeats); 1.0 for an empty completion."""
    return len(set(tokens)) / len(tokens) if tokens else 1.0


def check_reference(reference, tokenizer) -> None:
    """Refuse a reference model without an AR readout, or whose vocabulary differs."""
    from megatron_diffusion.data.tokenizer import load_tokenizer
    from megatron_diffusion.evaluation.infill import has_ar_readout

    if not has_ar_readout(reference.config):
        raise UsageError(f"--reference: {reference.path} is a {reference.config.attention.mode}-mode "
                         "checkpoint without an AR readout (output i predicts token i); expected a "
                         "causal, AR-objective or logit-shift checkpoint")
    if reference.tokenizer_path is None:
        raise UsageError(f"--reference: {reference.path} has no tokenizer.json to check its vocabulary")
    vocab = load_tokenizer(reference.tokenizer_path).tokenizer.get_vocab(with_added_tokens=True)
    if vocab != tokenizer.tokenizer.get_vocab(with_added_tokens=True):
        raise UsageError(f"--reference: {reference.path} has another tokenizer vocabulary than "
                         "--checkpoint (token ids would not mean the same text)")


@torch.no_grad()
def reference_nll(reference, prompts: list[list[int]], completions: list[list[int]],
                  batch_size: int) -> list[tuple[float, int]]:
    """Per prompt, ``(summed NLL in nats, tokens)`` of ``completions[i]`` after ``prompts[i]``
    under ``reference`` (a ``LoadedModel`` that passed ``check_reference``): the clean sequence,
    right-padded within a batch, under a causal mask, read shifted."""
    from megatron_diffusion.masks.config import AttentionConfig
    from megatron_diffusion.model.inputs import attention_mask

    cfg = reference.config
    causal = cfg.attention if cfg.attention.mode == "causal" else AttentionConfig(mode="causal")
    device = next(reference.model.parameters()).device
    out = []
    for first in range(0, len(prompts), batch_size):
        rows = [p + c for p, c in zip(prompts[first:first + batch_size],
                                      completions[first:first + batch_size])]
        L = max(len(r) for r in rows)
        tokens_BL = torch.zeros(len(rows), L, dtype=torch.long)
        for b, r in enumerate(rows):
            tokens_BL[b, :len(r)] = torch.tensor(r)
        tokens_BL = tokens_BL.to(device)
        positions_BL = torch.arange(L, device=device).expand(len(rows), L)
        mask = attention_mask(causal, torch.zeros_like(tokens_BL))
        logp_BLV = torch.log_softmax(reference.model(tokens_BL, positions_BL, mask).float(), dim=-1)
        for b, (p, c) in enumerate(zip(prompts[first:first + batch_size],
                                       completions[first:first + batch_size])):
            targets = torch.tensor(c, device=device)
            read = logp_BLV[b, len(p) - 1:len(p) - 1 + len(c)]
            out.append((-float(read.gather(-1, targets[:, None]).sum()), len(c)))
    return out
