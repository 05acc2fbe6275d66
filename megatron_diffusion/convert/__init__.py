"""Checkpoint conversion: Hugging Face (Llama family) <-> megatron-diffusion, GGUF import,
resharding, verify. docs/convert.md is the user's guide.

Reading order, as the data flows: ``hf_config`` (which HF architectures convert, and their
``config.json`` <-> ``ModelConfig``), ``tensor_map`` (HF tensor names and fused layouts <->
megatron's full names), ``safetensors_io`` (one tensor at a time, in and out),
``hf_tokenizer`` / ``generation`` (``[MASK]``, the document EOS, stop tokens, chat template),
``gguf_file`` / ``gguf_tokenizer`` (a llama.cpp GGUF seen as an HF checkpoint), ``dist_stream``
(megatron checkpoints without a second copy of the weights), then the commands
``hf_to_mcore`` / ``gguf_to_mcore`` / ``mcore_to_hf`` / ``reshard`` / ``verify``.
``hf_block_diffusion`` is copied into block-mode exports; ``hf_export`` loads an export as a
model; ``reference_model`` locates the reference GGUF; ``outdir`` makes every output appear
whole or not at all.
"""
