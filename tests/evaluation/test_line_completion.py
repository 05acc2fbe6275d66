"""Line completion: the line picker, the per-line figures by hand, the reference NLL."""

import re
import types

import pytest
import torch

from megatron_diffusion.errors import UsageError
from megatron_diffusion.evaluation import line_completion as lc
from megatron_diffusion.masks.config import AttentionConfig
from tests.helpers import make_checkpoint


class RegexTokenizer:
    """Tokens are the matches of ``pattern`` (default: one per character, so token counts are
    character counts); ids index a vocabulary that grows as text is encoded."""

    vocab_size = 128

    def __init__(self, pattern=r"(?s:.)"):
        self.pattern = re.compile(pattern)
        self.vocab = [chr(i) for i in range(128)]
        self.tokenizer = self  # LoadedTokenizer.tokenizer: the HF tokenizer, ids and offsets

    def encode(self, text, add_special_tokens=False):
        ids, offsets = [], []
        for m in self.pattern.finditer(text):
            if m.group() not in self.vocab:
                self.vocab.append(m.group())
            ids.append(self.vocab.index(m.group()))
            offsets.append(m.span())
        return types.SimpleNamespace(ids=ids, offsets=offsets)

    def decode(self, ids):
        return "".join(self.vocab[i] for i in ids)


SOURCE = ("x = 1\n"              # 1: fewer than 16 tokens before it (and the first line)
          "y = 2\n"              # 2: 6 tokens before it: too little context
          "\n"                   # 3: blank
          "# a comment\n"        # 4: comment only
          "def f(x):\n"          # 5: eligible (25 tokens before)
          "    # indented\n"     # 6: comment only
          "    return x + 1\n"   # 7: eligible
          "   \n"                # 8: blank (whitespace only)
          "z = f(2)\n")          # 9: eligible


def test_pick_lines_skips_blank_comment_and_short_context_lines(tmp_path):
    path = tmp_path / "a.py"
    path.write_text(SOURCE)
    picked = lc.pick_lines(RegexTokenizer(), [path], 3, context_tokens=10, seed=0)
    assert [p.line_number for p in picked] == [5, 7, 9]
    assert [p.true_line for p in picked] == ["def f(x):", "    return x + 1", "z = f(2)"]
    lines = SOURCE.split("\n")
    for p in picked:
        before = "\n".join(lines[:p.line_number - 1]) + "\n"  # ends right at the line's start
        assert RegexTokenizer().decode(p.prompt_ids) == before[-10:] and len(p.prompt_ids) == 10
    with pytest.raises(UsageError, match=r"--heldout: .*a.py has 3 eligible lines .* fewer than its share 4"):
        lc.pick_lines(RegexTokenizer(), [path], 4, context_tokens=10, seed=0)
    # a long context keeps the whole text before the line
    first = lc.pick_lines(RegexTokenizer(), [path], 1, context_tokens=1000, seed=0)[0]
    assert RegexTokenizer().decode(first.prompt_ids) == "\n".join(lines[:first.line_number - 1]) + "\n"


def test_a_newline_merged_with_the_indentation_ends_the_prompt(tmp_path):
    """As byte-level BPE tokenizes code: the newline and the next line's indentation are one token;
    the prompt ends after it (the file's own tokens), that whitespace is the line's prefix."""
    path = tmp_path / "a.py"
    path.write_text(SOURCE)
    tok = RegexTokenizer(r"\n *|(?s:.)")
    picked = {p.line_number: p for p in lc.pick_lines(tok, [path], 3, context_tokens=6, seed=0)}
    assert picked[7].line_prefix == "    " and picked[7].true_line == "    return x + 1"
    assert tok.decode(picked[7].prompt_ids) == "ented\n    "  # ends with the merged token
    assert picked[5].line_prefix == "" and tok.decode(picked[5].prompt_ids).endswith("ment\n")
    # a token that carries the line's first character: the line is not eligible
    merged = RegexTokenizer(r"\n\w|(?s:.)")
    assert [p.line_number for p in lc.pick_lines(merged, [path], 1, context_tokens=6, seed=0)] == [7]
    with pytest.raises(UsageError, match="has 1 eligible lines"):
        lc.pick_lines(merged, [path], 2, context_tokens=6, seed=0)


def test_pick_lines_is_seeded_and_split_over_files(tmp_path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("# header line of the file\n" + "".join(f"value_{i} = {i}\n" for i in range(40)))
    b.write_text(SOURCE)
    tok = RegexTokenizer()
    first, again = (lc.pick_lines(tok, [a, b], 5, context_tokens=32, seed=0) for _ in range(2))
    other = lc.pick_lines(tok, [a, b], 5, context_tokens=32, seed=1)
    assert [p.line_number for p in again] == [p.line_number for p in first]
    assert [p.line_number for p in other] != [p.line_number for p in first]
    # 5 lines over 2 files: 3 from the first, 2 from the second, each file's sorted by line
    assert [p.file for p in again] == [str(a)] * 3 + [str(b)] * 2
    assert [p.line_number for p in again[:3]] == sorted(p.line_number for p in again[:3])
    assert lc.split_quota(5, 2) == [3, 2] and lc.split_quota(6, 4) == [2, 2, 1, 1]


def test_levenshtein_and_edit_similarity_by_hand():
    assert lc.levenshtein("kitten", "sitting") == 3  # k->s, e->i, +g
    assert lc.levenshtein("", "abc") == 3 and lc.levenshtein("abc", "abc") == 0
    assert lc.levenshtein("flaw", "lawn") == 2
    assert lc.edit_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert lc.edit_similarity("  return x\n", "return x") == 1.0  # compared stripped
    assert lc.edit_similarity("", "") == 1.0 and lc.edit_similarity("", "ab") == 0.0


def test_exact_match_agreement_and_distinct_by_hand():
    assert lc.exact_match("  return x ", "return x") and not lc.exact_match("return  x", "return x")
    assert lc.exact_match_ws("return  x", "  return x") and not lc.exact_match_ws("returnx", "return x")
    assert lc.token_agreement([1, 2, 9, 4], [1, 2, 3]) == pytest.approx(2 / 3)  # over the AR length
    assert lc.token_agreement([1], [1, 2, 3, 4]) == pytest.approx(1 / 4)
    assert lc.distinct_tokens([5, 5, 5, 6]) == pytest.approx(2 / 4) and lc.distinct_tokens([]) == 1.0


def test_completion_line_cuts_at_the_newline_and_drops_a_stop_token():
    tok = RegexTokenizer()
    assert lc.completion_line(tok, tok.encode("return x\n    y").ids, checkpoint_stops=(0,)) == "return x"
    assert lc.completion_line(tok, tok.encode("abc").ids + [3], checkpoint_stops=(3,)) == "abc"
    assert lc.completion_line(tok, tok.encode("abc").ids + [3], checkpoint_stops=(4,)) == "abc\x03"
    ids = lc.newline_token_ids(tok)
    assert ids == (10,)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    return {"causal": make_checkpoint(root / "causal", attention=AttentionConfig(mode="causal"),
                                      logit_shift=True),
            "block": make_checkpoint(root / "block"),
            "other_vocab": make_checkpoint(root / "other", attention=AttentionConfig(mode="causal"),
                                           tokenizer_vocab=320)}


def test_reference_nll_matches_one_plain_causal_forward_per_row(checkpoints):
    from megatron_diffusion.loading.trained import load_model

    ref = load_model(checkpoints["causal"])
    prompts, completions = [[5, 6, 7, 8, 9], [11, 12]], [[20, 21], [30, 31, 32, 33]]
    got = lc.reference_nll(ref, prompts, completions, batch_size=2)  # right-padded together
    for (nll, n), p, c in zip(got, prompts, completions):
        row = torch.tensor([p + c])
        L = row.shape[1]
        mask = ~torch.tril(torch.ones(L, L, dtype=torch.bool))  # megatron: True = masked
        with torch.no_grad():
            logp = torch.log_softmax(ref.model(row, torch.arange(L)[None], mask[None, None]).float(), -1)
        hand = -sum(float(logp[0, len(p) - 1 + j, t]) for j, t in enumerate(c))
        assert n == len(c) and nll == pytest.approx(hand, rel=1e-5)


def test_check_reference_refuses_another_vocabulary_or_no_ar_readout(checkpoints):
    from megatron_diffusion.loading.trained import load_model
    from megatron_diffusion.data.tokenizer import load_tokenizer

    ref = load_model(checkpoints["causal"])
    tok = load_tokenizer(ref.tokenizer_path)
    lc.check_reference(ref, tok)  # same vocabulary, AR readout: accepted
    with pytest.raises(UsageError, match="--reference: .* another tokenizer vocabulary"):
        lc.check_reference(load_model(checkpoints["other_vocab"]), tok)
    with pytest.raises(UsageError, match="--reference: .* block-mode checkpoint without an AR readout"):
        lc.check_reference(load_model(checkpoints["block"]), tok)
