"""Loading a trained model from wherever it is stored: the layer above ``convert``.

``loading.load_model(path)`` takes a checkpoint directory, a run directory (its latest
checkpoint) or an HF export (``convert mcore-to-hf``) and returns a ``model.inference.
LoadedModel``; ``loading.load_sampler(path, ...)`` wraps that model and its tokenizer in the
sampler. The pieces it dispatches to rank below it: the checkpoint format (``CHECKPOINT_FORMAT``,
``checkpoint_meta``, ``read_meta``, ``resolve_checkpoint``) lives in ``training.checkpoint``,
which the trainer and the converters write through; the model is built by
``model.inference.build_inference_model``; HF exports load through ``convert.hf_export``.
"""
