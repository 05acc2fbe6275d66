"""The GPU check (docs/gpu.md): one prepared run of every GPU figure we have never had.

``tools/gpu_check.sh RESULTS_DIR`` installs the carried wheels and runs ``python3 -m
tools.gpu_check RESULTS_DIR``: the parts below in order, each under its own time cap inside one
overall budget (6 minutes on an H200 by default), each wrapped so that a failure or a time-out is
written into the results and the next part still runs. ``results.json`` is rewritten after
every part, so a run killed from outside keeps what it measured so far.

Parts (``report.PARTS``, in run order): ``env`` (versions, GPU), ``ceilings`` (bf16 matmul
TFLOP/s and copy bandwidth, measured), ``train`` (training throughput and MFU, ``train_bench``),
``attention`` (kernel times, ``attention_bench``), ``sampler`` (forwards/s and tokens/s vs the
HBM bound, ``sampler_bench``; where the model comes from: ``models``), ``pytest_gpu`` (``pytest -m
gpu``), ``cpt`` (a short block-diffusion CPT of SmolLM2, ``cpt``). ``--dry-run`` runs the same
parts on the CPU with tiny shapes (CI, tests/tools/test_gpu_check.py); ``shapes`` holds both sets
of shapes.
"""
