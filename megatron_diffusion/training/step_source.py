"""What a training step consumes: the trainer's one point of extension.

``Trainer`` owns what every run shares: parallel state, model and optimizer, the step
(``TrainStep``: learning rate, non-finite guard, optimizer step), logging, checkpoints, resume,
preemption. A *step source* owns what differs between kinds of training: where each step's
micro-batches come from, the forward/backward they go through, the figures the step adds to
its record, and the state a checkpoint keeps so that a resumed run takes the same data.
``training.step_source`` names it; the ``train`` entry point maps the name to the class:
``corpus`` (``training.corpus_source.CorpusSource``: corrupted rows of the token store) or
``onpolicy`` (``onpolicy.source.OnPolicySource``: the model's own samples, docs/onpolicy.md).
"""

from abc import ABC, abstractmethod
from collections.abc import Iterator


class StepSource(ABC):
    """The hooks ``Trainer`` calls, in the order it calls them. ``run`` is the trainer: its
    ``cfg``, ``stores``, ``init_from``, ``rank``, ``dp_rank``/``dp_size``, ``spec``,
    ``num_microbatches``; ``chunks`` and ``num_params`` once the model is built; ``step`` (steps
    done) and ``generation`` during training."""

    def __init__(self, cfg):
        self.cfg = cfg

    def check(self, run, resume_path) -> None:
        """The source's own refusals at config time (the config complete, the checkpoint to
        resume from known, before the parallel state and before anything is written)."""

    @abstractmethod
    def build(self, run) -> None:
        """This data-parallel rank's data, after the parallel state and before the run directory
        is written: a ``UsageError`` here leaves nothing behind."""

    def build_models(self, run) -> None:
        """Models of the source's own (a frozen reference), after the trained model and its
        optimizer, before the checkpoint is restored."""

    @abstractmethod
    def cost(self, run):
        """The ``train_step.StepCost`` of one step (its throughput figures)."""

    @abstractmethod
    def forward_backward(self, chunks, microbatches: list, spec) -> dict:
        """The step's forward/backward over this rank's micro-batches; ``{"loss", "ce", ...}``
        reduced over the ranks (``forward_backward.forward_backward`` is the contract)."""

    @abstractmethod
    def steps(self, run, first_step: int) -> Iterator[tuple[list, dict]]:
        """``(micro-batches, figures)`` of each step in order, from step ``first_step`` (steps
        done before) on: this rank's micro-batches and the figures the step's record gets."""

    def complete_record(self, run, record: dict) -> bool:
        """Add the figures due after step ``run.step`` to its record; True when they must be
        logged whatever ``training.log_interval`` says (held-out figures)."""
        return False

    @abstractmethod
    def progress(self, record: dict) -> dict:
        """The progress line's fields, from a step's record."""

    @property
    @abstractmethod
    def consumed_samples(self) -> int:
        """Samples (over all data-parallel ranks) the completed steps consumed (``meta.json``)."""

    @abstractmethod
    def state_dict(self) -> dict:
        """This data-parallel rank's state (a checkpoint's ``loader/dp_<rank>.json``)."""

    @abstractmethod
    def load_state_dict(self, state: dict | None, *, consumed_samples: int) -> None:
        """Continue after a checkpoint's ``state``; None (saved under another data-parallel
        size): after the checkpoint's global ``consumed_samples``."""

    def meta(self, run) -> dict:
        """Fields of the checkpoint's ``meta.json`` that the source sets (after the others)."""
        return {}
