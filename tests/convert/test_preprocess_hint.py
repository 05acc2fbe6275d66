"""preprocess with an HF tokenizer that has no [MASK] points at the converted tokenizer.json."""

import sysconfig
from pathlib import Path

from megatron_diffusion import cli
from tests.convert.hf_fixtures import make_hf_tokenizer

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def test_missing_mask_points_to_the_converted_tokenizer(tmp_path, capsys):
    make_hf_tokenizer(tmp_path / "tokenizer.json", 280, ["<|endoftext|>"])
    rc = cli.main(["preprocess", "--input", str(STDLIB / "json"), "--glob", "*.py",
                   "--output", str(tmp_path / "store.zarr"),
                   "--tokenizer", str(tmp_path / "tokenizer.json")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "lacks the mask token '[MASK]'; for a converted model use the OUT/tokenizer.json " \
           "written by `megatron-diffusion convert hf-to-mcore --add-mask-token`" in err
    assert not (tmp_path / "store.zarr").exists()
