"""Conversion outputs are readable by others like any mkdir'd directory (not mkdtemp's 0700)."""

import os
import stat

import pytest

from megatron_diffusion.convert.outdir import atomic_output_dir


@pytest.mark.parametrize("umask,mode", [(0o022, 0o755), (0o027, 0o750)])
def test_output_dir_mode_follows_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        with atomic_output_dir(tmp_path / "out", force=False) as tmp:
            (tmp / "f.txt").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == mode


def test_converted_checkpoint_dir_is_0755(mc_llama):
    old = os.umask(0o022)
    os.umask(old)
    if old != 0o022:
        pytest.skip(f"umask {old:o} (the fixture was converted under it)")
    assert stat.S_IMODE(mc_llama.stat().st_mode) == 0o755
