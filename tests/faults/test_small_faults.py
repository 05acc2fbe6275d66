"""Small input and interruption faults (an empty config, an empty tokenizer corpus, a killed
preprocess, a missing --init-from, ...): each must be one line naming the input, or leave nothing
behind; each was a traceback, a wrong message or a silent success."""

import os

import yaml

from megatron_diffusion.cli import main
from tests.helpers import ROOT, make_tokenizer
from tests.training.conftest import TINY

CFG = str(ROOT / "examples" / "cpu_demo.yaml")


def _cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.err.strip(), out.out


def _one_line(code, err, *needles):
    assert code == 2, err
    err = "\n".join(line for line in err.splitlines() if "error" in line)  # not progress bars
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


def test_empty_config_is_one_line_naming_data_blend(tmp_path, capsys):
    cfg = tmp_path / "empty.yaml"
    cfg.write_text("")
    code, err, _ = _cli(capsys, "train", "--config", str(cfg), "--run-dir", str(tmp_path / "run"))
    _one_line(code, err, "data.blend")
    assert not (tmp_path / "run").exists()


def test_config_without_blend_is_one_line(tmp_path, capsys):
    code, err, _ = _cli(capsys, "inspect-data", "--config", CFG, "--out", str(tmp_path / "o.jsonl"),
                        "data.blend=[]", *TINY)
    _one_line(code, err, "data.blend")


def test_yaml_1_1_exponent_floats_are_accepted(tmp_path):
    from megatron_diffusion.config import load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("optimizer:\n  lr: 1e-4\n  min_lr: 2e-5\n")
    loaded = load_config(cfg, ["optimizer.adam_eps=1e-8"], validate=False)
    assert (loaded.optimizer.lr, loaded.optimizer.min_lr, loaded.optimizer.adam_eps) == (1e-4, 2e-5, 1e-8)
    assert yaml.safe_load("1e-4") == "1e-4"  # what YAML 1.1 makes of it: the reason for the fix


def test_train_tokenizer_refuses_an_empty_corpus(tmp_path, capsys):
    (tmp_path / "corpus").mkdir()
    out = tmp_path / "tok.json"
    code, err, _ = _cli(capsys, "train-tokenizer", "--input", str(tmp_path / "corpus"),
                        "--output", str(out), "--vocab-size", "300")
    _one_line(code, err, "--input", "no text")
    assert not out.exists()


def test_train_tokenizer_refuses_a_smaller_vocabulary_than_asked(tmp_path, capsys):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("ab ab ab")
    out = tmp_path / "tok.json"
    code, err, _ = _cli(capsys, "train-tokenizer", "--input", str(tmp_path / "corpus"),
                        "--output", str(out), "--vocab-size", "1000")
    _one_line(code, err, "--vocab-size", "1000")
    assert not out.exists()


def test_preprocess_removes_the_temporary_store_of_a_killed_run(tmp_path):
    from megatron_diffusion.data.ingest import IngestConfig, preprocess

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text("def f():\n    return 1\n" * 20)
    tok = make_tokenizer(tmp_path / "tok.json", 300)
    dead = tmp_path / ".s.zarr.tmp-999999999"  # kill -9 left it; that pid does not exist
    (dead / "tokens").mkdir(parents=True)
    alive = tmp_path / f".s.zarr.tmp-{os.getppid()}"  # a live process's run: not touched
    alive.mkdir()
    preprocess(IngestConfig(inputs=[str(src)], output=str(tmp_path / "s.zarr"), tokenizer=str(tok),
                            glob="*.py", validation_fraction=0.0))
    assert not dead.exists() and alive.exists()
    assert (tmp_path / "s.zarr" / "zarr.json").is_file()


def test_missing_init_from_is_reported_as_init_from(tiny_store, tmp_path, capsys):
    code, err, _ = _cli(capsys, "train", "--config", CFG, "--run-dir", str(tmp_path / "run"),
                        "--init-from", str(tmp_path / "nope"), f"data.blend=[[1.0, {tiny_store}]]", *TINY)
    _one_line(code, err, "--init-from", "nope")
    assert "--checkpoint" not in err


def test_overrides_after_an_option_are_applied(tiny_store, tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    code, err, _ = _cli(capsys, "inspect-data", "--config", CFG, f"data.blend=[[1.0, {tiny_store}]]",
                        *TINY, "--out", str(out), "data.micro_batch_size=1", "training.train_iters=10")
    assert code == 0, err
    assert len(out.read_text().splitlines()) == 1  # one micro-batch of the overridden size 1
    code, err, _ = _cli(capsys, "train", "--config", CFG, f"data.blend=[[1.0, {tiny_store}]]",
                        "--run-dir", str(tmp_path / "run"), "model.num_layerz=2")
    _one_line(code, err, "model.num_layerz")  # parsed as an override, not "unrecognized"
