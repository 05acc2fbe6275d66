"""Layout of a packed row: documents, diffusion blocks and positions.

Shared by corruption (per-block noise levels) and masks (who may attend to whom), so both agree
on what a "block" is. Pure torch, no megatron.

A row of ``L`` tokens holds one or more documents, given as ``document_ids_BL`` (int, the index of
the document each token belongs to, non-decreasing along the row; ``B`` the batch).

Two visibilities (docs/method.md 4):

* ``shared`` (Stable-DiffCoder): the documents of a row see each other as if they were one
  sequence. Blocks are counted from the row start (block of token ``i`` is ``i // block_size``)
  and positions are ``0..L-1``.
* ``isolated``: attention never crosses a document boundary. Blocks restart at each document's
  first token (a document's last block may be short) and positions restart at 0 per document.

Block ids are numbered 0, 1, 2, ... along the row in both cases, so "earlier block" is simply
``block_q > block_k`` (plus "same document" when isolated).
"""

import torch

from megatron_diffusion.errors import UsageError, check_choice

VISIBILITIES = ("shared", "isolated")


def document_ids_from_lengths(doc_lengths, device=None) -> torch.Tensor:
    """``[3, 5] -> [0, 0, 0, 1, 1, 1, 1, 1]`` (1-D, int64)."""
    lengths = torch.as_tensor(list(doc_lengths), dtype=torch.long)
    if lengths.numel() == 0 or bool((lengths <= 0).any()):
        raise UsageError(f"doc lengths: got {list(doc_lengths)}, expected positive integers")
    return torch.repeat_interleave(torch.arange(lengths.numel()), lengths).to(device)


def document_starts(document_ids_BL: torch.Tensor) -> torch.Tensor:
    """Bool ``[B, L]``: True at the first token of every document (and at column 0)."""
    starts = torch.ones_like(document_ids_BL, dtype=torch.bool)
    starts[..., 1:] = document_ids_BL[..., 1:] != document_ids_BL[..., :-1]
    return starts


def _offset_in_document(document_ids_BL: torch.Tensor) -> torch.Tensor:
    """Index of every token inside its own document (0 at each document start)."""
    L = document_ids_BL.shape[-1]
    idx = torch.arange(L, device=document_ids_BL.device).expand_as(document_ids_BL)
    start_idx = torch.where(document_starts(document_ids_BL), idx, torch.zeros_like(idx))
    start_idx = torch.cummax(start_idx, dim=-1).values
    return idx - start_idx


def position_ids(document_ids_BL: torch.Tensor, visibility: str) -> torch.Tensor:
    """RoPE positions: ``0..L-1`` when shared; restart at 0 per document when isolated."""
    check_choice("visibility", visibility, VISIBILITIES)
    if visibility == "isolated":
        return _offset_in_document(document_ids_BL)
    L = document_ids_BL.shape[-1]
    return torch.arange(L, device=document_ids_BL.device).expand_as(document_ids_BL).clone()


def block_ids(document_ids_BL: torch.Tensor, block_size: int, visibility: str) -> torch.Tensor:
    """Diffusion block index of every token, numbered 0, 1, ... along the row.

    shared: ``i // block_size``. isolated: a new block starts at every document start and every
    ``block_size`` tokens inside a document.
    """
    check_choice("visibility", visibility, VISIBILITIES)
    if not isinstance(block_size, int) or block_size <= 0:
        raise UsageError(f"block_size: got {block_size!r}, expected a positive integer")
    if visibility == "isolated":
        offset = _offset_in_document(document_ids_BL)
    else:
        L = document_ids_BL.shape[-1]
        offset = torch.arange(L, device=document_ids_BL.device).expand_as(document_ids_BL)
    new_block = (offset % block_size) == 0
    return torch.cumsum(new_block.long(), dim=-1) - 1
