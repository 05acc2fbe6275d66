"""Infill evaluation: the eval command and the trainer's periodic hook (fixed-rate masking
itself: tests/corruption/test_fixed_rate.py)."""

import json

from tests.training.conftest import losses, run_train


def test_eval_infill_and_training_hook(tiny_store, tmp_path, capsys):
    run = tmp_path / "run"
    run_train(tiny_store, run, "training.train_iters=4", "training.infill_eval_interval=2",
              "training.eval_interval=2", "training.eval_iters=1")
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    hooked = [r for r in recs if "infill_acc@0.5" in r]
    assert [r["step"] for r in hooked] == [2, 4]
    assert all(0 <= r["infill_acc@0.5"] <= 1 and 0 <= r["val_acc"] <= 1 for r in hooked)
    assert sorted(losses(run)) == [1, 2, 3, 4]

    from megatron_diffusion.cli import main

    out = tmp_path / "infill"
    code = main(["eval", "infill", "--checkpoint", str(run), "--data", str(tiny_store),
                 "--mask-rates", "0.2,0.8", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    rep = json.loads((out / "infill.json").read_text())
    assert [r["mask_rate"] for r in rep["infill"]] == [0.2, 0.8]
    assert rep["elbo_bits_per_token"] > 0 and rep["ar_nll_bits_per_token"] is None
    code = main(["eval", "infill", "--checkpoint", str(tmp_path / "missing"), "--data",
                 str(tiny_store), "--out", str(out)])
    assert code == 2


def test_eval_infill_on_a_converted_ar_layout(tmp_path, capsys):
    """A causal logit-shift checkpoint (what convert writes for an AR model) gets the masked
    metrics too, read shifted, and its next-token accuracy next to the AR NLL."""
    import sysconfig
    from pathlib import Path

    from megatron_diffusion.cli import main
    from megatron_diffusion.masks.config import AttentionConfig
    from tests.helpers import make_checkpoint

    run = tmp_path / "run"
    make_checkpoint(run, attention=AttentionConfig(mode="causal"), logit_shift=True)
    data = Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py"
    out = tmp_path / "infill"
    assert main(["eval", "infill", "--checkpoint", str(run), "--data", str(data), "--mask-rates", "0.5",
                 "--out", str(out)]) == 0, capsys.readouterr().err
    rep = json.loads((out / "infill.json").read_text())
    assert [r["mask_rate"] for r in rep["infill"]] == [0.5] and rep["logit_shift"] is True
    assert rep["ar_nll_bits_per_token"] > 0 and 0 <= rep["next_token_accuracy"] <= 1
    assert "elbo_bits_per_token" not in rep  # a causal model has no diffusion ELBO


def test_readout_follows_the_sampler_rule():
    """An AR-objective checkpoint is read shifted even without model.logit_shift (the trainer's
    AR stage writes such checkpoints; the sampler decodes them shifted)."""
    from megatron_diffusion.config import RunConfig
    from megatron_diffusion.evaluation.infill import has_ar_readout, loss_kwargs_for

    cfg = RunConfig()
    cfg.attention.mode = "block"
    assert loss_kwargs_for(cfg) == {} and not has_ar_readout(cfg)
    cfg.model.logit_shift = True
    assert loss_kwargs_for(cfg) == {"logit_shift": True, "block_size": 4, "visibility": "shared"}
    cfg.model.logit_shift, cfg.loss.objective, cfg.attention.mode = False, "ar", "causal"
    assert loss_kwargs_for(cfg) == {"logit_shift": True} and has_ar_readout(cfg)
