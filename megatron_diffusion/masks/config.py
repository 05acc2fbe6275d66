"""Which attention mask the model uses (METHOD.md 3-4); see ``dense.py`` for the definitions."""

from dataclasses import dataclass

from megatron_diffusion.errors import UsageError, check_choice
from megatron_diffusion.layout import VISIBILITIES

MODES = ("causal", "bidirectional", "block")
CLEAN_STREAMS = ("block_causal", "causal")


@dataclass
class AttentionConfig:
    mode: str = "block"
    """``causal`` (AR: key <= query), ``bidirectional`` (full diffusion: every token sees every
    token) or ``block`` (block diffusion: the model input is ``x_t (+) x0``, length ``2L``, with
    the three-part mask of METHOD.md 3)."""
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

    def validate(self, seq_len: int | None = None) -> "AttentionConfig":
        """Raise ``UsageError`` on unknown values, or a block size that does not divide
        ``seq_len`` (when given). Returns ``self`` so calls can chain."""
        check_choice("mode", self.mode, MODES)
        check_choice("visibility", self.visibility, VISIBILITIES)
        check_choice("clean_stream", self.clean_stream, CLEAN_STREAMS)
        if self.mode == "block":
            bs = self.block_size
            if not isinstance(bs, int) or isinstance(bs, bool) or bs <= 0:
                raise UsageError(f"block_size: got {bs!r}, expected a positive integer")
            if seq_len is not None and seq_len % bs != 0:
                raise UsageError(
                    f"block_size: got {bs}, expected a divisor of seq_len {seq_len}"
                )
        return self

    def sequence_length(self, seq_len: int) -> int:
        """Length ``S`` of the model input for ``seq_len`` clean tokens: ``2L`` in block mode."""
        return 2 * seq_len if self.mode == "block" else seq_len
