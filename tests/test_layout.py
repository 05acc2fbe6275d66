import pytest
import torch

from megatron_diffusion.errors import UsageError
from megatron_diffusion.layout import block_ids, document_ids_from_lengths, position_ids


def test_document_ids_from_lengths():
    assert document_ids_from_lengths([3, 5]).tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    with pytest.raises(UsageError):
        document_ids_from_lengths([3, 0])


def test_positions_and_blocks_shared_vs_isolated():
    doc = document_ids_from_lengths([3, 5]).unsqueeze(0)
    assert position_ids(doc, "shared").tolist() == [[0, 1, 2, 3, 4, 5, 6, 7]]
    assert position_ids(doc, "isolated").tolist() == [[0, 1, 2, 0, 1, 2, 3, 4]]
    # shared: blocks counted from the row start
    assert block_ids(doc, 2, "shared").tolist() == [[0, 0, 1, 1, 2, 2, 3, 3]]
    # isolated: blocks restart at each document; the first document's last block is short
    assert block_ids(doc, 2, "isolated").tolist() == [[0, 0, 1, 2, 2, 3, 3, 4]]


def test_block_ids_bad_block_size():
    doc = torch.zeros(1, 8, dtype=torch.long)
    with pytest.raises(UsageError, match="block_size"):
        block_ids(doc, 0, "shared")
    with pytest.raises(UsageError, match="visibility"):
        block_ids(doc, 2, "nope")
