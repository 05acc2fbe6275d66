"""Which attention mask the model uses (docs/method.md 3-4); ``dense.py`` has the definitions."""

from dataclasses import dataclass
from typing import Self

from megatron_diffusion.errors import UsageError, check_choice, check_int
from megatron_diffusion.layout import VISIBILITIES

MODES = ("causal", "bidirectional", "block")
CLEAN_STREAMS = ("block_causal", "causal")


@dataclass
class AttentionConfig:
    """Which attention mask the model trains and samples with: the mode, the diffusion block size
    and what a block sees of the clean stream (docs/masks.md)."""

    mode: str = "block"
    """``causal`` (AR: key <= query), ``bidirectional`` (full diffusion: every token sees every
    token) or ``block`` (block diffusion: the model input is ``x_t (+) x0``, length ``2L``, with
    the three-part mask of docs/method.md 3)."""
    block_size: int = 4
    """Diffusion block size ``B`` in tokens (block mode only; Stable-DiffCoder uses 4). Must
    divide ``seq_len``."""
    visibility: str = "shared"
    """Packed documents: ``shared`` (Stable-DiffCoder: the documents of a row see each other, one
    static mask per shape) or ``isolated`` (attention never crosses a document boundary; blocks
    and positions restart per document)."""
    clean_stream: str = "block_causal"
    """Block mode only: how the clean copy ``x0`` attends to itself. ``block_causal`` (bd3lms,
    SDAR: block ``b`` sees blocks ``<= b``) or ``causal`` (token ``i`` sees tokens ``<= i``;
    allows an AR loss on the clean half and an exact prefix cache)."""

    def validate(self) -> Self:
        """Raise ``UsageError`` on an unknown value or a bad block size; returns ``self``. That
        the block size divides the row length is a cross-section check (``check_seq_len``)."""
        check_choice("mode", self.mode, MODES)
        check_choice("visibility", self.visibility, VISIBILITIES)
        check_choice("clean_stream", self.clean_stream, CLEAN_STREAMS)
        if self.mode == "block":
            check_int("block_size", self.block_size, lo=1)
        return self

    def check_seq_len(self, seq_len: int, seq_len_name: str = "seq_len") -> None:
        """Raise ``UsageError`` unless the block size divides ``seq_len`` (block mode only)."""
        if self.mode == "block" and seq_len % self.block_size != 0:
            raise UsageError(f"block_size: got {self.block_size}, expected a divisor of "
                             f"{seq_len_name} {seq_len}")

    def sequence_length(self, seq_len: int) -> int:
        """Length ``S`` of the model input for ``seq_len`` clean tokens: ``2L`` in block mode."""
        return 2 * seq_len if self.mode == "block" else seq_len
