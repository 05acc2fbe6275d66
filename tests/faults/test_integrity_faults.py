"""Integrity faults: what a killed conversion leaves, a store on a read-only file
system, a checkpoint that meets another tokenizer than its own.

Each test failed before its fix: the conversion's temporaries stayed forever, the index cache
write was a traceback, a checkpoint of another tokenizer was trained on or sampled from silently.
"""

import os
import shutil
import subprocess
import sys

import pytest

from megatron_diffusion.cli import main
from tests.faults.conftest import json_store
from tests.helpers import ROOT
from tests.training.conftest import env, losses, train_cmd


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


def test_convert_removes_the_temporaries_of_a_killed_conversion(tmp_path, capsys):
    from tests.convert.hf_fixtures import make_hf_model

    hf = make_hf_model(tmp_path / "hf", "llama", tied=False, num_layers=2)
    for kind, out, argv in (
            ("hf-to-mcore", tmp_path / "mc", ["--hf", str(hf), "--add-mask-token"]),
            ("mcore-to-hf", tmp_path / "export", ["--checkpoint", str(tmp_path / "mc")])):
        dead = tmp_path / f".{out.name}.tmp-{_dead_pid()}"  # kill -9 left it
        (dead / "checkpoints").mkdir(parents=True)
        alive = tmp_path / f".{out.name}.tmp-{os.getppid()}"  # a live conversion's: kept
        alive.mkdir()
        code = main(["convert", kind, *argv, "--out", str(out), "--no-progress"])
        assert code == 0, capsys.readouterr().err
        assert not dead.exists(), kind
        assert alive.is_dir(), kind
        assert out.is_dir() and not list(tmp_path.glob(f".{out.name}.tmp-{os.getpid()}"))


def _read_only(directory, cmd, env):
    """Run ``cmd`` while ``directory`` is read-only: a read-only bind mount in a private mount
    namespace as root (``chmod`` does not stop root), ``chmod a-w`` otherwise."""
    if os.geteuid() != 0:
        mode = directory.stat().st_mode
        directory.chmod(0o555)
        try:
            return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=300)
        finally:
            directory.chmod(mode)
    if shutil.which("unshare") is None:
        pytest.skip("root without unshare: no way to make a directory read-only")
    script = ('mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" || exit 99; shift; '
              'touch "$0/probe" 2>/dev/null && exit 98; exec "$@"')
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script, str(directory), str(directory),
                           *cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode in (98, 99):
        pytest.skip(f"cannot mount {directory} read-only here ({proc.stderr.strip()})")
    return proc


def test_a_store_on_a_read_only_file_system_indexes_in_the_user_cache(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    store = json_store(shared, "s.zarr", validation_fraction=0.05)
    cache = tmp_path / "cache"
    # one worker: the DataLoader's process must use the cache chosen by the trainer, unannounced
    cmd = train_cmd(store, tmp_path / "run", "training.train_iters=1", "data.num_workers=1")
    proc = _read_only(shared, cmd, dict(env(), XDG_CACHE_HOME=str(cache)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = [line for line in proc.stderr.splitlines() if "index" in line]
    assert len(said) == 1 and str(store) in said[0] and "Read-only file system" in said[0], said
    root = cache / "megatron-diffusion" / "index"
    [keyed] = root.iterdir()  # s.zarr-<hash of the store's path>
    assert keyed.name.startswith("s.zarr-") and str(keyed) in said[0]
    assert list(keyed.glob("*/seed*-L16-train-cpt/epoch0/meta.json")), sorted(keyed.rglob("*"))
    assert not (shared / "s.zarr.index").exists()
    assert sorted(losses(tmp_path / "run")) == [1]


def test_two_read_only_stores_of_one_name_get_their_own_cache(tmp_path, monkeypatch, capsys):
    """The per-user cache is keyed by the store's path: two ``s.zarr`` never share an index.
    (The read-only condition is the previous test's real one; here only its answer.)"""
    from megatron_diffusion.data import index
    from megatron_diffusion.data.store import TokenStore

    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    stores = [TokenStore(json_store(tmp_path / d, "s.zarr", 0.0)) for d in ("a", "b")]
    capsys.readouterr()  # preprocess's progress
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(index, "_unwritable", lambda directory: "Read-only file system",
                        raising=False)
    roots = [index.cache_root(s, None) for s in stores]
    assert roots[0] != roots[1] and all(r.is_relative_to(tmp_path / "cache") for r in roots)
    assert [r.name for r in roots] == [s.store_id for s in stores]
    index.cache_root(stores[0], None)
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 2 and all(str(r.parent) in line for r, line in zip(roots, said)), said


def _other_tokenizer(path):
    """Another tokenizer of the same size (300 ids, the same special ids): other merges."""
    from megatron_diffusion.data.tokenizer import load_tokenizer, train_tokenizer
    from tests.helpers import stdlib_texts

    train_tokenizer(stdlib_texts(5), 300).save(str(path))
    return load_tokenizer(path)


@pytest.fixture(scope="module")
def other_store(tmp_path_factory):
    """``tiny_store``'s documents tokenized with ``_other_tokenizer``."""
    import sysconfig
    from pathlib import Path

    from megatron_diffusion.data.ingest import IngestConfig, preprocess

    d = tmp_path_factory.mktemp("other")
    _other_tokenizer(d / "tokenizer.json")
    lib = Path(sysconfig.get_paths()["stdlib"])
    preprocess(IngestConfig(inputs=[str(lib / "json"), str(lib / "email")],
                            output=str(d / "s.zarr"), tokenizer=str(d / "tokenizer.json"),
                            glob="*.py", validation_fraction=0.1))
    return d / "s.zarr"


def _refused(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_a_checkpoint_of_another_tokenizer_is_refused_by_init_from_and_resume(
        tiny_store, other_store, tmp_path):
    from megatron_diffusion.data.store import TokenStore
    from megatron_diffusion.training.checkpoint import latest_checkpoint
    from tests.faults.conftest import run_cli

    assert TokenStore(other_store).vocab_size == TokenStore(tiny_store).vocab_size == 300
    run = tmp_path / "run"
    run_cli(tiny_store, run, "training.train_iters=1", "training.save_interval=1")
    ckpt = latest_checkpoint(run)
    meta = ckpt / "meta.json"

    cpt = tmp_path / "cpt"
    proc = run_cli(other_store, cpt, "training.train_iters=1", resume=None,
                   extra=["--init-from", str(run)], check=False)
    _refused(proc, "--init-from", str(meta), str(other_store), "tokenizer")
    assert not cpt.exists()

    def written():
        return {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}

    before = written()
    proc = run_cli(other_store, run, "training.train_iters=2", check=False)  # --resume auto
    assert written() == before  # before: config.yaml and a snapshot rewritten, then refused
    _refused(proc, "--resume", str(meta), str(other_store), "tokenizer")


@pytest.mark.parametrize("checksums", [False, True], ids=["no-checksums", "checksums"])
def test_sample_refuses_a_swapped_tokenizer_json(tmp_path, capsys, checksums):
    import json

    from tests.helpers import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "run", num_layers=2)
    if not checksums:  # a checkpoint from before checksums: only the hash can tell
        (ckpt / "checksums.json").unlink()
    _other_tokenizer(ckpt / "tokenizer.json")
    argv = ["sample", "--checkpoint", str(ckpt), "--prompt", "def f", "--max-new-tokens", "4"]
    capsys.readouterr()
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    for needle in ("--checkpoint", str(ckpt / "tokenizer.json"), str(ckpt / "meta.json")):
        assert needle in err[0], err[0]

    if not checksums:  # a checkpoint from before tokenizer hashes: nothing to compare, it loads
        meta = json.loads((ckpt / "meta.json").read_text())
        del meta["tokenizer_hash"]
        (ckpt / "meta.json").write_text(json.dumps(meta))
        assert main(argv) == 0, capsys.readouterr().err


def test_an_hf_export_with_a_swapped_tokenizer_is_refused(tmp_path, capsys):
    """An `mcore-to-hf` export carries the exported checkpoint's tokenizer hash (its
    megatron_diffusion.json); `sample` of the export (and `convert hf-to-mcore` of it) used a
    replaced tokenizer.json silently."""
    from megatron_diffusion.convert.mcore_to_hf import convert_mcore_to_hf
    from tests.helpers import make_checkpoint

    export = tmp_path / "hf"
    convert_mcore_to_hf(make_checkpoint(tmp_path / "run", num_layers=2), export, progress=False)
    argv = ["sample", "--checkpoint", str(export), "--prompt", "def f", "--max-new-tokens", "4"]
    assert main(argv) == 0, capsys.readouterr().err  # its own tokenizer loads
    _other_tokenizer(export / "tokenizer.json")
    capsys.readouterr()
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and str(export / "tokenizer.json") in err[0], err
    assert "megatron_diffusion.json tokenizer_hash" in err[0], err[0]


def test_a_later_phase_on_data_of_another_tokenizer_is_refused_before_phase_1(
        tiny_store, other_store, tmp_path, capsys):
    """A phase starts from the previous phase's final checkpoint: phase 2's store of another
    tokenizer was refused only when phase 2 started, after phase 1 had trained."""
    from tests.training.conftest import TINY
    from tests.training.test_phases import phased_config

    phases = [{"name": "first", "train_iters": 1, "data.blend": [[1.0, str(tiny_store)]]},
              {"name": "second", "train_iters": 1, "data.blend": [[1.0, str(other_store)]]}]
    run = tmp_path / "run"
    capsys.readouterr()  # (an override on the command line would apply to every phase)
    code = main(["train", "--config", str(phased_config(tmp_path, phases)), "--run-dir", str(run),
                 *TINY])
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line or "phases" in line]
    assert code == 2 and len(err) == 1, err
    assert "phases[1] (second)" in err[0] and str(other_store) in err[0], err[0]
    assert not run.exists()
