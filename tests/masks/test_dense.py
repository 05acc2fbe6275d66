"""Dense masks against hand-written matrices ('1' = may attend, '.' = masked), plus properties.

Rows are queries, columns keys. In block mode rows/columns 0..L-1 are the noisy copy x_t and
L..2L-1 the clean copy x0.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_diffusion.errors import UsageError
from megatron_diffusion.layout import block_ids, document_ids_from_lengths
from megatron_diffusion.masks import (
    AttentionConfig,
    attention_allowed,
    position_ids_for_mode,
    to_megatron_mask,
)


def parse(picture: str) -> torch.Tensor:
    rows = [r.strip() for r in picture.strip().splitlines()]
    return torch.tensor([[c == "1" for c in r] for r in rows])


def mask_of(mode, doc_lengths, block_size=2, visibility="shared", clean_stream="block_causal"):
    cfg = AttentionConfig(mode, block_size, visibility, clean_stream)
    doc = document_ids_from_lengths(doc_lengths).unsqueeze(0)
    allowed = attention_allowed(cfg, doc)
    assert allowed.dtype == torch.bool and allowed.shape[0] == 1
    return allowed[0]


CAUSAL_8 = """
1.......
11......
111.....
1111....
11111...
111111..
1111111.
11111111
"""

CAUSAL_ISOLATED_3_5 = """
1.......
11......
111.....
...1....
...11...
...111..
...1111.
...11111
"""

BIDIRECTIONAL_ISOLATED_6_2 = """
111111..
111111..
111111..
111111..
111111..
111111..
......11
......11
"""

# blocks 0 0 1 1 2 2 3 3 on both copies
BLOCK_SHARED_B2 = """
11..............
11..............
..11....11......
..11....11......
....11..1111....
....11..1111....
......11111111..
......11111111..
........11......
........11......
........1111....
........1111....
........111111..
........111111..
........11111111
........11111111
"""

BLOCK_SHARED_B4_CAUSAL_CLEAN = """
1111............
1111............
1111............
1111............
....11111111....
....11111111....
....11111111....
....11111111....
........1.......
........11......
........111.....
........1111....
........11111...
........111111..
........1111111.
........11111111
"""

# docs 3,5 -> blocks restart per document: 0 0 1 | 2 2 3 3 4
BLOCK_ISOLATED_3_5_B2 = """
11..............
11..............
..1.....11......
...11...........
...11...........
.....11....11...
.....11....11...
.......1...1111.
........11......
........11......
........111.....
...........11...
...........11...
...........1111.
...........1111.
...........11111
"""

BLOCK_ISOLATED_3_5_B2_CAUSAL_CLEAN = """
11..............
11..............
..1.....11......
...11...........
...11...........
.....11....11...
.....11....11...
.......1...1111.
........1.......
........11......
........111.....
...........1....
...........11...
...........111..
...........1111.
...........11111
"""

BLOCK_ISOLATED_4_4_B4 = """
1111............
1111............
1111............
1111............
....1111........
....1111........
....1111........
....1111........
........1111....
........1111....
........1111....
........1111....
............1111
............1111
............1111
............1111
"""

# docs 6,2 with block size 2: blocks 0 0 1 1 2 2 | 3 3 (same ids as shared, but no cross-doc)
BLOCK_ISOLATED_6_2_B2 = """
11..............
11..............
..11....11......
..11....11......
....11..1111....
....11..1111....
......11........
......11........
........11......
........11......
........1111....
........1111....
........111111..
........111111..
..............11
..............11
"""

BLOCK_ISOLATED_6_2_B2_CAUSAL_CLEAN = """
11..............
11..............
..11....11......
..11....11......
....11..1111....
....11..1111....
......11........
......11........
........1.......
........11......
........111.....
........1111....
........11111...
........111111..
..............1.
..............11
"""


@pytest.mark.parametrize(
    "args, picture",
    [
        (("causal", [8]), CAUSAL_8),
        (("causal", [3, 5]), CAUSAL_8),  # shared: packing changes nothing
        (("causal", [3, 5], 2, "isolated"), CAUSAL_ISOLATED_3_5),
        (("bidirectional", [8]), "11111111\n" * 8),
        (("bidirectional", [4, 4]), "11111111\n" * 8),
        (("bidirectional", [4, 4], 2, "isolated"), ("11110000\n" * 4 + "00001111\n" * 4).replace("0", ".")),
        (("bidirectional", [6, 2], 2, "isolated"), BIDIRECTIONAL_ISOLATED_6_2),
        (("block", [8], 2), BLOCK_SHARED_B2),
        (("block", [3, 5], 2), BLOCK_SHARED_B2),
        (("block", [6, 2], 2), BLOCK_SHARED_B2),
        (("block", [8], 4, "shared", "causal"), BLOCK_SHARED_B4_CAUSAL_CLEAN),
        (("block", [3, 5], 2, "isolated"), BLOCK_ISOLATED_3_5_B2),
        (("block", [3, 5], 2, "isolated", "causal"), BLOCK_ISOLATED_3_5_B2_CAUSAL_CLEAN),
        (("block", [4, 4], 4, "isolated"), BLOCK_ISOLATED_4_4_B4),
        (("block", [6, 2], 2, "isolated"), BLOCK_ISOLATED_6_2_B2),
        (("block", [6, 2], 2, "isolated", "causal"), BLOCK_ISOLATED_6_2_B2_CAUSAL_CLEAN),
    ],
)
def test_hand_written_masks(args, picture):
    assert torch.equal(mask_of(*args), parse(picture))


def test_block_one_document_isolated_equals_shared():
    for clean_stream in ("block_causal", "causal"):
        shared = mask_of("block", [12], 4, "shared", clean_stream)
        isolated = mask_of("block", [12], 4, "isolated", clean_stream)
        assert torch.equal(shared, isolated)


def test_batch_rows_are_independent():
    cfg = AttentionConfig("block", 2, "isolated")
    doc = torch.stack([document_ids_from_lengths([3, 5]), document_ids_from_lengths([6, 2])])
    allowed = attention_allowed(cfg, doc)
    assert allowed.shape == (2, 16, 16)
    assert torch.equal(allowed[0], parse(BLOCK_ISOLATED_3_5_B2))
    assert torch.equal(allowed[1], parse(BLOCK_ISOLATED_6_2_B2))


def test_megatron_convention_is_inverted_with_head_dim():
    allowed = attention_allowed(AttentionConfig("causal"), torch.zeros(2, 4, dtype=torch.long))
    masked = to_megatron_mask(allowed)
    assert masked.shape == (2, 1, 4, 4)
    assert masked[0, 0, 0, 1] and not masked[0, 0, 1, 0]
    assert torch.equal(masked[:, 0], ~allowed)


def test_position_ids_for_mode():
    doc = document_ids_from_lengths([3, 5]).unsqueeze(0)
    iso = AttentionConfig("block", 2, "isolated")
    assert position_ids_for_mode(doc, iso).tolist() == [[0, 1, 2, 0, 1, 2, 3, 4] * 2]
    shared = AttentionConfig("block", 2, "shared")
    assert position_ids_for_mode(doc, shared).tolist() == [list(range(8)) * 2]
    causal = AttentionConfig("causal", 2, "isolated")
    assert position_ids_for_mode(doc, causal).tolist() == [[0, 1, 2, 0, 1, 2, 3, 4]]


@pytest.mark.parametrize(
    "cfg, field",
    [
        (AttentionConfig("blocky"), "mode"),
        (AttentionConfig("block", 0), "block_size"),
        (AttentionConfig("block", 2.0), "block_size"),
        (AttentionConfig("block", 2, "private"), "visibility"),
        (AttentionConfig("block", 2, "shared", "ar"), "clean_stream"),
    ],
)
def test_validate_names_the_field(cfg, field):
    with pytest.raises(UsageError, match=f"^{field}:"):
        cfg.validate()


def test_block_size_must_divide_the_row():
    cfg = AttentionConfig("block", 3).validate()
    with pytest.raises(UsageError, match="^block_size: got 3, expected a divisor of seq_len 8$"):
        cfg.check_seq_len(8)
    cfg.check_seq_len(9)


def test_block_size_ignored_outside_block_mode():
    AttentionConfig("causal", 3).validate().check_seq_len(8)


# ---- properties over random packings ---------------------------------------------------------

packings = st.lists(st.integers(1, 7), min_size=1, max_size=4)


@settings(max_examples=40, deadline=None)
@given(
    lengths=packings,
    block_size=st.sampled_from([1, 2, 3, 4]),
    visibility=st.sampled_from(["shared", "isolated"]),
    clean_stream=st.sampled_from(["block_causal", "causal"]),
)
def test_block_mode_isolation_property(lengths, block_size, visibility, clean_stream):
    L = sum(lengths)
    L += (-L) % block_size  # pad the last document so block_size divides L
    lengths = lengths[:-1] + [lengths[-1] + L - sum(lengths)]
    doc_L = document_ids_from_lengths(lengths)
    cfg = AttentionConfig("block", block_size, visibility, clean_stream)
    allowed = attention_allowed(cfg, doc_L.unsqueeze(0))[0]
    blk = block_ids(doc_L.unsqueeze(0), block_size, visibility)[0]
    same_doc = doc_L[:, None] == doc_L[None, :]
    # noisy row of block b: only its own noisy block and earlier clean blocks
    assert not (allowed[:L, :L] & (blk[:, None] != blk[None, :])).any()
    assert not (allowed[:L, L:] & (blk[:, None] <= blk[None, :])).any()
    # the clean copy never sees noisy tokens; nothing leaks across documents when isolated
    assert not allowed[L:, :L].any()
    if visibility == "isolated":
        for part in (allowed[:L, :L], allowed[:L, L:], allowed[L:, L:]):
            assert not (part & ~same_doc).any()
    # every row keeps its diagonal, so no softmax row is empty
    assert allowed.diagonal().all()


@settings(max_examples=20, deadline=None)
@given(lengths=packings, mode=st.sampled_from(["causal", "bidirectional", "block"]),
       clean_stream=st.sampled_from(["block_causal", "causal"]))
def test_shared_visibility_ignores_documents(lengths, mode, clean_stream):
    L = sum(lengths)
    cfg = AttentionConfig(mode, 1, "shared", clean_stream)
    packed = attention_allowed(cfg, document_ids_from_lengths(lengths).unsqueeze(0))
    single = attention_allowed(cfg, torch.zeros(1, L, dtype=torch.long))
    assert torch.equal(packed, single)
