"""Checkpoint conversion: Hugging Face (Llama family) <-> megatron-diffusion, GGUF import,
resharding, verify.

Reads in the order of the data flow (see docs/convert.md):

* ``hf_config``: which HF architectures convert (``LlamaForCausalLM``, ``Qwen2ForCausalLM``,
  ``Qwen3ForCausalLM``) and how their ``config.json`` maps onto ``ModelConfig`` (and back, for
  the export); what is refused (MoE, sliding window, RoPE scaling, ...);
* ``tensor_map``: HF tensor names <-> megatron's (layout-independent, *full*) names, and the
  fused layouts (QKV grouped per query group, SwiGLU ``[gate; up]``, padded vocabulary, Qwen3's
  q/k norms);
* ``safetensors_io``: a sharded safetensors reader that reads one tensor at a time with plain
  ``readinto`` (no mmap, so RSS does not grow with the file) and a writer that streams tensors
  into shards whose headers are computed up front;
* ``hf_tokenizer``: adding ``[MASK]`` to an HF tokenizer, the document EOS (``--eos-token``),
  and the tokenizer files of an export;
* ``generation``: stop tokens, chat template and generation config (``meta.json``
  ``generation``), read on import and written back on export;
* ``gguf_file`` / ``gguf_tokenizer``: a llama.cpp GGUF seen as an HF checkpoint (config from the
  metadata, dequantised tensors under HF names with the q/k RoPE permutation undone, the
  tokenizer rebuilt from ``tokenizer.ggml.*``);
* ``dist_stream``: writing/reading megatron ``dist_checkpointing`` state without a second copy
  of the weights (prebuilt sharded state dict on save, one layer at a time on load);
* ``hf_to_mcore`` / ``gguf_to_mcore`` / ``mcore_to_hf`` / ``reshard`` / ``verify``: the
  commands;
* ``hf_block_diffusion``: copied into block-mode exports as ``block_diffusion.py``, sampling with
  ``transformers`` alone;
* ``reference_model``: where the reference model's GGUF is installed;
* ``hf_export``: load an HF export (or any supported HF dir with ``[MASK]``) as a model, so the
  sampler can start from the shipped format;
* ``outdir``: every command writes into a temporary sibling and renames at the end.
"""
