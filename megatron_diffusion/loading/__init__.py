"""Loading a trained model for inference, from wherever it is stored: the level after ``convert``.

``trained.load_model(path)`` takes a checkpoint directory, a run directory (its latest
checkpoint) or an HF export (``convert mcore-to-hf``) and returns a ``model.inference.
LoadedModel``; ``trained.load_sampler(path, ...)`` wraps that model and its tokenizer in the
sampler. It only reads: the checkpoint format it reads (``CHECKPOINT_FORMAT``, ``checkpoint_meta``,
``read_meta``, ``resolve_checkpoint``) lives in ``training.checkpoint``, which the trainer and the
converters write through; the model is built by ``model.inference.build_inference_model`` (which
knows the model config only); HF exports load through ``convert.hf_export``.
"""
