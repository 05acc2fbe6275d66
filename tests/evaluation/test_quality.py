"""``eval quality``: AUP and continuation accuracy by hand, the report on tiny checkpoints."""

import json
import math
import sysconfig
from pathlib import Path

import pytest
import torch

from megatron_diffusion.cli import main
from megatron_diffusion.evaluation.quality import aup, continuation_accuracy, matching_prefix, summarize_curve
from megatron_diffusion.masks.config import AttentionConfig
from tests.helpers import make_checkpoint

STDLIB = Path(sysconfig.get_paths()["stdlib"])
HELDOUT = [STDLIB / "textwrap.py", STDLIB / "shlex.py"]


def test_aup_by_hand():
    curve = [(3.0, 48.0), (1.0, 50.0), (4.0, 40.0), (2.0, 50.0)]  # unsorted on purpose
    w48 = math.exp(-3 * (1 - 48 / 50))
    # d3LLM: y_min = y_1 - 5 = 45 drops (4, 40); rho_1 y_1 + trapezoids of y W(y)
    assert aup(curve) == pytest.approx(1 * 50 + 0.5 * 1 * (50 + 50) + 0.5 * 1 * (48 * w48 + 50))
    assert aup(curve, drop=1.0) == pytest.approx(50 + 50)  # 48 < 50 - 1: only the first two
    # y_max from another decode (e.g. the AR baseline) weighs every point down
    w = [math.exp(-3 * (1 - y / 60)) for y in (50, 48)]
    assert aup(curve, 60.0) == pytest.approx(50 + 0.5 * (50 * w[0] * 2) + 0.5 * (48 * w[1] + 50 * w[0]))
    assert aup([(1.0, 70.0)]) == 70.0  # one point: rho x accuracy (an AR decoder's AUP)
    assert aup([(1.0, 0.0), (2.0, 0.0)]) == 0.0
    assert aup(curve, alpha=0.0) == pytest.approx(50 + 50 + 0.5 * (48 + 50))  # no penalty: plain area
    with pytest.raises(ValueError):
        aup([(0.0, 10.0)])


def test_continuation_accuracy_by_hand():
    truths = [[5, 6, 7, 8], [1, 2, 3, 4]]
    # positions compared one by one; a shift by one token scores 0, an early stop counts as wrong
    assert continuation_accuracy([[5, 6, 0, 8], [1, 2]], truths) == pytest.approx((3 / 4 + 2 / 4) / 2)
    assert continuation_accuracy([[6, 7, 8, 9], [1, 2, 3, 4, 5]], truths) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        continuation_accuracy([[1]], truths)
    assert matching_prefix([[5, 6, 0, 8], [1, 2]], truths) == pytest.approx((2 + 2) / 2)
    assert matching_prefix([[6, 7, 8, 9], [1, 2, 3, 4, 5]], truths) == pytest.approx((0 + 4) / 2)


def _point(label, tpf, acc, tps):
    return {"label": label, "tokens_per_forward": tpf, "accuracy": acc, "tokens_per_second": tps}


def test_summary_picks_the_fastest_point_within_one_point():
    ar = _point("AR baseline", 1.0, 0.52, 10.0)
    curve = [_point("1 token/step", 1.0, 0.50, 9.0), _point("threshold 0.9", 1.5, 0.495, 14.0),
             _point("threshold 0.5", 2.5, 0.45, 25.0)]
    s = summarize_curve(ar, curve)
    assert s["best_within_1pt"]["label"] == "threshold 0.9"
    assert s["best_within_1pt"]["speedup_tokens_per_second_over_ar"] == pytest.approx(1.4)
    assert s["y_max_percent"] == pytest.approx(52.0)
    assert s["aup"] == pytest.approx(aup([(1.0, 50.0), (1.5, 49.5), (2.5, 45.0)], 52.0))
    assert s["aup_within_1pt"] == pytest.approx(aup([(1.0, 50.0), (1.5, 49.5)], 52.0))
    assert s["ar_baseline_aup"] == pytest.approx(52.0)


ARGS = ["--prompt-len", "16", "--continuation-len", "8", "--seq-len", "32", "--max-rows", "4",
        "--thresholds", "0.9,0.5", "--mask-rates", "0.3"]


@pytest.fixture(scope="module")
def causal_ckpt(tmp_path_factory):
    """A tiny causal, logit-shift checkpoint: a converted AR model's layout."""
    return make_checkpoint(tmp_path_factory.mktemp("causal"), attention=AttentionConfig(mode="causal"),
                           logit_shift=True)


def test_report_on_a_block_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    make_checkpoint(run)
    out = tmp_path / "report.json"
    assert main(["eval", "quality", "--checkpoint", str(run), "--heldout", *map(str, HELDOUT),
                 "--out", str(out), "--block-size", "4", *ARGS]) == 0
    printed = capsys.readouterr().out
    assert "threshold 0.5" in printed and "AUP" in printed
    r = json.loads(out.read_text())
    assert [p["label"] for p in r["curve"]] == ["1 token/step", "threshold 0.9", "threshold 0.5"]
    assert r["ar_baseline"]["block_size"] == 1 and r["curve"][0]["block_size"] == 4
    for p in [r["ar_baseline"], *r["curve"]]:
        assert p["num_tokens"] == 2 * 8  # EOS ignored: every decode scored over the same positions
        assert 1.0 <= p["tokens_per_forward"] <= 4 and 0 <= p["accuracy"] <= 1
    assert r["next_token"] is None  # block mode without shift: no AR readout
    assert [m["mask_rate"] for m in r["masked"]] == [0.3] and r["rows"] == 4
    assert r["aup"] == pytest.approx(aup([(p["tokens_per_forward"], 100 * p["accuracy"]) for p in r["curve"]],
                                         r["y_max_percent"]))


def test_next_token_metrics_match_a_plain_causal_forward(causal_ckpt, tmp_path):
    from megatron_diffusion.evaluation.infill import next_token_metrics
    from megatron_diffusion.evaluation.quality import heldout_token_rows
    from megatron_diffusion.checkpoint.loading import load_model

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
    from megatron_diffusion.evaluation.quality import QualityConfig, heldout_token_rows, quality_report
    from megatron_diffusion.model.inputs import model_inputs
    from megatron_diffusion.checkpoint.loading import load_sampler

    run = tmp_path / "run"
    make_checkpoint(run, attention=AttentionConfig(mode="block", block_size=4), logit_shift=True)
    qc = QualityConfig(prompt_len=16, continuation_len=8, seq_len=32, max_rows=4, thresholds=(0.5,),
                       mask_rates=(0.5,))
    sampler = load_sampler(run, max_new_tokens=8, batch_size=4)
    loaded = sampler.loaded
    r = quality_report(sampler, HELDOUT, qc)
    assert r["next_token"] is not None  # the shift gives it an AR readout
    assert [p["label"] for p in r["curve"]] == ["1 token/step", "threshold 0.5"]  # decoded shifted too

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
