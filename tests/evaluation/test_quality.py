"""``eval quality``: the decode list, the "within N points" rule, AUP with its interval, the
report end to end on tiny checkpoints (with a ``--reference``), bad input."""

import json
import sysconfig
from pathlib import Path

import pytest
import torch

from megatron_diffusion.cli import main
from megatron_diffusion.evaluation import bootstrap as bs
from megatron_diffusion.evaluation import line_completion as lc
from megatron_diffusion.evaluation import quality
from megatron_diffusion.evaluation.aup import aup
from megatron_diffusion.evaluation.quality import QualityConfig, decode_list
from megatron_diffusion.masks.config import AttentionConfig
from tests.helpers import make_checkpoint

STDLIB = Path(sysconfig.get_paths()["stdlib"])
HELDOUT = [STDLIB / "textwrap.py", STDLIB / "shlex.py"]


def test_decode_list_is_data():
    qc = QualityConfig(thresholds=(0.9, 0.5), draft_lens=(2, 4))  # not validated: no sampler needed
    decodes = decode_list(qc, "block")
    assert [d.label for d in decodes] == ["AR baseline", "1 token/step", "threshold 0.9", "threshold 0.5",
                                          "speculative 2", "speculative 4"]
    assert decodes[0].changes == {"ar_baseline": True} and decodes[1].changes == {"strategy": "fixed"}
    assert decodes[3].changes == {"strategy": "threshold", "threshold": 0.5}
    assert decodes[5].changes == {"strategy": "speculative", "draft_len": 4}
    assert [d.label for d in decode_list(qc, "bidirectional")][0] == "1 token/step"  # no AR decode


def test_within_n_points_needs_the_paired_interval_not_the_mean():
    index = bs.resample_indices(10, 1000, seed=0)
    em = {"1 token/step": [1.0] * 10, "same": [1.0] * 10, "one lost": [1.0] * 9 + [0.0]}
    w = quality.within_points(em, "1 token/step", 15.0, index)
    # "one lost": mean -10 points, inside 15; its paired interval's lower bound is -30: not claimed
    assert w["one lost"]["difference_points"] == pytest.approx({"value": -10.0, "lo": -30.0, "hi": 0.0})
    assert not w["one lost"]["within"]
    assert w["same"]["within"] and "1 token/step" not in w
    assert quality.within_points(em, "1 token/step", 30.0, index)["one lost"]["within"]


def _point(label, tpf, tps=10.0):
    return {"label": label, "tokens_per_forward": {"value": tpf, "lo": tpf, "hi": tpf},
            "tokens_per_second": {"value": tps, "lo": tps, "hi": tps}}


def test_fastest_within_and_the_claim():
    qc = QualityConfig(within_points=1.0)
    points = [_point("AR baseline", 1.0, 5.0), _point("1 token/step", 1.0), _point("threshold 0.9", 1.6, 15.0),
              _point("threshold 0.5", 2.5)]
    within = {"threshold 0.9": {"within": True}, "threshold 0.5": {"within": False}}
    best = quality.fastest_within(points, within, "1 token/step")
    assert best["label"] == "threshold 0.9"  # threshold 0.5 is faster but not supported
    assert quality.claim(best, qc, 60, points[0]) == (
        "most tokens per forward within 1 point of 1 token/step: threshold 0.9 "
        "(1.60 [1.60, 1.60] tok/fwd; 3.00x the AR decode's tok/s on this machine)")
    # more tokens per forward at fewer tokens per second (a CPU paying for the extra tokens)
    slow = quality.claim(best, qc, 60, _point("AR baseline", 1.0, 30.0))
    assert slow.endswith("(1.60 [1.60, 1.60] tok/fwd; 0.50x the AR decode's tok/s on this "
                         "machine, i.e. slower here)")
    # qualifying but not faster than the reference is no parallel gain; nothing qualifying: said plainly
    assert quality.fastest_within([points[1], _point("threshold 0.9", 1.0)], within, "1 token/step") is None
    # more tokens per forward inside the intervals' overlap is no gain either (0.99 vs 0.98)
    close = {"label": "threshold 0.9", "tokens_per_forward": {"value": 0.99, "lo": 0.98, "hi": 1.0}}
    reference = {"label": "1 token/step", "tokens_per_forward": {"value": 0.98, "lo": 0.97, "hi": 1.0}}
    assert quality.fastest_within([reference, close], within, "1 token/step") is None
    none = quality.fastest_within(points, {"threshold 0.9": {"within": False}}, "1 token/step")
    assert none is None
    assert quality.claim(None, QualityConfig(within_points=2.0), 60, None) == (
        "no parallel setting is within 2 points of 1 token/step at this sample size (60 lines)")


def _values(em, tokens, forwards):
    return {"exact_match": em, "num_tokens": tokens, "num_forwards": forwards}


def test_aup_estimate_on_all_prompts_and_its_interval():
    index = bs.resample_indices(4, 300, seed=0)
    values = {"AR baseline": _values([1.0, 1.0, 1.0, 0.0], [4] * 4, [4] * 4),
              "1 token/step": _values([1.0, 1.0, 0.0, 0.0], [4] * 4, [4] * 4),
              "threshold 0.5": _values([1.0, 0.0, 0.0, 0.0], [4, 4, 8, 8], [2, 2, 2, 2])}
    curve = ["1 token/step", "threshold 0.5"]
    e = quality.aup_estimate(values, curve, index, drop=100.0)
    # y_max = the AR baseline's 75%; points (1, 50) and (3, 25)
    assert e["value"] == pytest.approx(aup([(1.0, 50.0), (3.0, 25.0)], 75.0, drop=100.0))
    assert e["lo"] <= e["value"] <= e["hi"] and e["hi"] > e["lo"]
    constant = {k: _values([1.0] * 4, [4] * 4, [4] * 4) for k in ("a", "b")}
    assert quality.aup_estimate(constant, ["a", "b"], index) == pytest.approx(
        {"value": 100.0, "lo": 100.0, "hi": 100.0})


ARGS = ["--lines", "6", "--context-tokens", "48", "--max-line-tokens", "10", "--bootstrap-resamples", "200",
        "--prompt-len", "16", "--continuation-len", "8", "--seq-len", "32", "--max-rows", "4",
        "--thresholds", "0.9,0.5", "--mask-rates", "0.3"]


@pytest.fixture(scope="module")
def causal_ckpt(tmp_path_factory):
    """A tiny causal, logit-shift checkpoint: a converted AR model's layout."""
    return make_checkpoint(tmp_path_factory.mktemp("causal"), attention=AttentionConfig(mode="causal"),
                           logit_shift=True)


def _recompute(records, key):
    return sum(r[key] for r in records) / len(records)


def test_report_on_a_block_checkpoint_with_a_reference(causal_ckpt, tmp_path, capsys):
    from megatron_diffusion.loading.trained import load_model
    from megatron_diffusion.data.tokenizer import load_tokenizer

    run = tmp_path / "run"
    make_checkpoint(run)
    out = tmp_path / "report.json"
    assert main(["eval", "quality", "--checkpoint", str(run), "--heldout", *map(str, HELDOUT),
                 "--out", str(out), "--block-size", "4", "--reference", str(causal_ckpt), *ARGS]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    # stderr is no terminal here (a batch log): every decode's progress as plain lines
    for label in ("AR baseline", "1 token/step", "threshold 0.9", "threshold 0.5"):
        assert f"[eval quality: {label}] 6/6 samples (100%)" in captured.err, captured.err
    assert "[eval quality: continuation] 4/4 decodes (100%)" in captured.err
    assert "line EM" in printed and "AUP" in printed and "continuation accuracy (secondary" in printed
    r = json.loads(out.read_text())
    lines = r["line_completion"]
    assert printed.count(lines["claim"]) == 1 and r["reference"]["checkpoint"].startswith(str(causal_ckpt))
    decodes = {p["label"]: p for p in lines["decodes"]}
    assert list(decodes) == ["AR baseline", "1 token/step", "threshold 0.9", "threshold 0.5"]
    assert decodes["AR baseline"]["block_size"] == 1 and decodes["1 token/step"]["block_size"] == 4
    assert lines["num_prompts"] == 6 and lines["bootstrap"]["resamples"] == 200

    tok = load_tokenizer(run / "tokenizer.json")
    ref = load_model(causal_ckpt)
    newline = set(lc.newline_token_ids(tok))
    ar = decodes["AR baseline"]["records"]
    for p in decodes.values():
        rec = p["records"]
        assert [(x["file"], x["line_number"]) for x in rec] == [(x["file"], x["line_number"]) for x in ar]
        for x in rec:
            text = Path(x["file"]).read_text().split("\n")
            # the prompt is the text right before the line (its last --context-tokens tokens), up to
            # the file's token boundary after the newline (which may carry some indentation)
            before = "\n".join(text[:x["line_number"] - 1]) + "\n"
            prompt = tok.decode(x["prompt_ids"])
            assert len(x["prompt_ids"]) <= 48 and (before + x["line_prefix"]).endswith(prompt)
            assert prompt.rstrip(" \t").endswith("\n") and not x["line_prefix"].strip()
            assert x["true_line"] == text[x["line_number"] - 1] and x["true_line"].startswith(x["line_prefix"])
            # decoding stops at the first newline token; the line is the text before it
            ids = x["completion_ids"]
            assert 1 <= len(ids) <= 10 and not newline & set(ids[:-1])
            assert x["line"] == x["line_prefix"] + tok.decode(ids).split("\n")[0]
            assert x["exact_match"] == float(x["line"].strip() == x["true_line"].strip())
        # every figure is recomputable from the records
        assert p["exact_match"]["value"] == pytest.approx(_recompute(rec, "exact_match"))
        assert p["edit_similarity"]["value"] == pytest.approx(_recompute(rec, "edit_similarity"))
        assert p["tokens_per_forward"]["value"] == pytest.approx(
            sum(len(x["completion_ids"]) for x in rec) / sum(x["num_forwards"] for x in rec))
        assert p["distinct_tokens"]["value"] == pytest.approx(
            sum(len(set(x["completion_ids"])) / len(x["completion_ids"]) for x in rec) / len(rec))
        for e in (p["exact_match"], p["tokens_per_forward"], p["reference_nll"]):
            assert e["lo"] <= e["value"] + 1e-9 and e["value"] <= e["hi"] + 1e-9
        nll = lc.reference_nll(ref, [x["prompt_ids"] for x in rec], [x["completion_ids"] for x in rec], 1)
        assert p["reference_nll"]["value"] == pytest.approx(
            sum(s for s, _ in nll) / sum(n for _, n in nll), rel=1e-4)
        if p["label"] != "AR baseline":
            assert p["ar_line_agreement"]["value"] == pytest.approx(
                sum(x["line"] == a["line"] for x, a in zip(rec, ar)) / len(rec))
            assert p["ar_token_agreement"]["value"] == pytest.approx(sum(
                lc.token_agreement(x["completion_ids"], a["completion_ids"]) for x, a in zip(rec, ar)) / len(rec))
    assert decodes["AR baseline"]["ar_line_agreement"] is None
    assert set(lines["within"]) == {"threshold 0.9", "threshold 0.5"}
    # the secondary continuation section keeps the old figures on the same decodes
    c = r["continuation"]
    assert c["ar_baseline"]["label"] == "AR baseline" and [p["label"] for p in c["curve"]] == list(decodes)[1:]
    for p in [c["ar_baseline"], *c["curve"]]:
        assert p["num_tokens"] == 2 * 8  # EOS ignored: every decode scored over the same positions
    assert r["next_token"] is None  # block mode without shift: no AR readout
    assert [m["mask_rate"] for m in r["masked"]] == [0.3] and r["rows"] == 4


def test_next_token_metrics_match_a_plain_causal_forward(causal_ckpt, tmp_path):
    from megatron_diffusion.evaluation.infill import next_token_metrics
    from megatron_diffusion.evaluation.quality import heldout_token_rows
    from megatron_diffusion.loading.trained import load_model

    out = tmp_path / "report.json"
    assert main(["eval", "quality", "--checkpoint", str(causal_ckpt), "--heldout", *map(str, HELDOUT),
                 "--out", str(out), *ARGS]) == 0
    r = json.loads(out.read_text())
    loaded = load_model(causal_ckpt)
    rows = heldout_token_rows(loaded, HELDOUT, 32, 4)
    L = rows.shape[1]
    causal = ~torch.tril(torch.ones(L, L, dtype=torch.bool))  # megatron: True = masked
    with torch.no_grad():
        logits = loaded.model(rows, torch.arange(L).expand_as(rows), causal[None, None].expand(4, 1, L, L))
    logp = torch.log_softmax(logits.float()[:, :-1], -1)
    nll = -logp.gather(-1, rows[:, 1:, None]).mean().item()
    acc = (logp.argmax(-1) == rows[:, 1:]).float().mean().item()
    assert r["next_token"]["nll_nats"] == pytest.approx(nll, rel=1e-4)
    assert r["next_token"]["accuracy"] == pytest.approx(acc)
    assert next_token_metrics(loaded.model, loaded.config, rows)["accuracy"] == pytest.approx(acc)
    assert r["masked"] is not None and r["model"]["logit_shift"] is True


@pytest.mark.parametrize("extra,message", [
    (["--thresholds", "0.9,1.5"], "argument --thresholds: expected thresholds in (0, 1]"),
    (["--block-size", "0"], "--block-size: got 0"),
    (["--continuation-len", "0"], "--continuation-len: got 0"),
    (["--heldout", "/nonexistent.py"], "--heldout: /nonexistent.py is not a file"),
    (["--lines", "0"], "--lines: got 0"),
    (["--within-points", "-1"], "--within-points: got -1.0"),
    (["--bootstrap-resamples", "0"], "--bootstrap-resamples: got 0"),
    (["--speculative", "0"], "argument --speculative: expected integers >= 1"),
    (["--reference", "/nonexistent/ref"], "--reference: '/nonexistent/ref' is not a directory"),
])
def test_bad_input_is_one_line_and_exit_2(causal_ckpt, tmp_path, capsys, extra, message):
    out = tmp_path / "report.json"
    argv = ["eval", "quality", "--checkpoint", str(causal_ckpt), "--heldout", str(HELDOUT[0]),
            "--out", str(out), *extra]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse errors
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_a_prompt_and_line_longer_than_the_model_are_refused(causal_ckpt, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["eval", "quality", "--checkpoint", str(causal_ckpt), "--heldout", str(HELDOUT[0]),
                 "--out", str(out), "--context-tokens", "240"]) == 2  # after the load (its warnings)
    assert capsys.readouterr().err.splitlines()[-1] == (
        "megatron-diffusion eval: error: --context-tokens: 240 + --max-line-tokens 48 exceed the "
        "--checkpoint model's max_position_embeddings 256")
    assert not out.exists()


def test_a_speculative_point_is_one_more_decode_and_reproduces_the_ar_lines(tmp_path):
    """A block model with a causal clean stream and the shift: self-speculative decoding (greedy)
    is lossless, so its lines are the AR baseline's, token for token, in fewer forwards."""
    run = tmp_path / "run"
    make_checkpoint(run, attention=AttentionConfig(mode="block", block_size=4, clean_stream="causal"),
                    logit_shift=True)
    out = tmp_path / "report.json"
    assert main(["eval", "quality", "--checkpoint", str(run), "--heldout", *map(str, HELDOUT),
                 "--out", str(out), *ARGS, "--thresholds", "0.5", "--speculative", "2"]) == 0
    decodes = {p["label"]: p for p in json.loads(out.read_text())["line_completion"]["decodes"]}
    assert list(decodes) == ["AR baseline", "1 token/step", "threshold 0.5", "speculative 2"]
    spec, ar = decodes["speculative 2"], decodes["AR baseline"]
    assert spec["sampler"] == {"strategy": "speculative", "draft_len": 2}
    assert [x["completion_ids"] for x in spec["records"]] == [x["completion_ids"] for x in ar["records"]]
    assert spec["ar_line_agreement"]["value"] == 1.0 and spec["ar_token_agreement"]["value"] == 1.0
    assert spec["exact_match"] == ar["exact_match"]
    rec = spec["records"]
    tokens = sum(len(x["completion_ids"]) for x in rec)
    forwards = sum(x["num_forwards"] for x in rec)
    assert spec["mean_accepted_draft"]["value"] == pytest.approx(
        (tokens - forwards) / (forwards - len(rec)))


def test_a_reference_with_another_vocabulary_is_refused(causal_ckpt, tmp_path, capsys):
    other = make_checkpoint(tmp_path / "other", attention=AttentionConfig(mode="causal"), tokenizer_vocab=320)
    out = tmp_path / "report.json"
    assert main(["eval", "quality", "--checkpoint", str(causal_ckpt), "--heldout", *map(str, HELDOUT),
                 "--out", str(out), "--reference", str(other), *ARGS]) == 2
    last = capsys.readouterr().err.splitlines()[-1]  # after the loads (their warnings)
    assert last.startswith("megatron-diffusion eval: error: --reference: ") and "another tokenizer vocabulary" in last
    assert not out.exists()


def test_a_file_too_short_for_a_window_is_refused(causal_ckpt, tmp_path, capsys):
    short = tmp_path / "short.py"
    short.write_text("def f():\n    return 1\n")
    out = tmp_path / "report.json"
    assert main(["eval", "quality", "--checkpoint", str(causal_ckpt), "--heldout", str(short),
                 "--out", str(out), *ARGS]) == 2
    assert "--heldout:" in capsys.readouterr().err and not out.exists()


def test_block_shift_checkpoint_is_read_with_its_shift(tmp_path):
    """Masked CE of a block-mode logit-shift checkpoint (shifted CPT), by hand: target ``j`` is
    read from the noisy output ``j - 1``, a block's first token from the clean output before it."""
    from megatron_diffusion.corruption.fixed_rate import FixedRateMasking
    from megatron_diffusion.evaluation.infill import masked_metrics
    from megatron_diffusion.evaluation.quality import heldout_token_rows, quality_report
    from megatron_diffusion.model.inputs import model_inputs
    from megatron_diffusion.loading.trained import load_sampler

    run = tmp_path / "run"
    make_checkpoint(run, attention=AttentionConfig(mode="block", block_size=4), logit_shift=True)
    qc = QualityConfig(lines=4, context_tokens=32, max_line_tokens=8, bootstrap_resamples=50,
                       prompt_len=16, continuation_len=8, seq_len=32, max_rows=4, thresholds=(0.5,),
                       mask_rates=(0.5,))
    sampler = load_sampler(run, max_new_tokens=8, batch_size=4)
    loaded = sampler.loaded
    r = quality_report(sampler, HELDOUT, qc)
    assert r["next_token"] is not None  # the shift gives it an AR readout
    labels = ["AR baseline", "1 token/step", "threshold 0.5"]  # decoded shifted too
    assert [p["label"] for p in r["line_completion"]["decodes"]] == labels
    assert [p["label"] for p in r["continuation"]["curve"]] == labels[1:]

    rows = heldout_token_rows(loaded, HELDOUT, 32, 4)
    cfg = loaded.config
    batch = FixedRateMasking(0.5, mask_token_id=cfg.model.mask_token_id, block_size=4).corrupt(
        rows, torch.zeros_like(rows), generator=torch.Generator().manual_seed(1234))
    with torch.no_grad():
        logp = torch.log_softmax(loaded.model(*model_inputs(batch, cfg.attention)).float(), -1)  # [4, 64, V]
    L = 32
    src = torch.tensor([j - 1 + (L if j % 4 == 0 else 0) for j in range(1, L)])
    targets, weights = rows[:, 1:], batch.loss_weights_BL[:, 1:] > 0
    ce = -logp[:, src].gather(-1, targets[..., None])[..., 0]
    hand_ce = ce[weights].mean().item()
    hand_acc = ((logp[:, src].argmax(-1) == targets) & weights).sum().item() / weights.sum().item()
    assert r["masked"][0]["ce_nats"] == pytest.approx(hand_ce, rel=1e-5)
    assert r["masked"][0]["accuracy"] == pytest.approx(hand_acc)
    assert masked_metrics(loaded.model, cfg, rows, [0.5])[0]["ce_nats"] == pytest.approx(hand_ce, rel=1e-5)
