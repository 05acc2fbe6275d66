"""lm-evaluation-harness model ``megatron_diffusion``: the one place ``lm_eval`` is imported.

``pip install 'megatron-diffusion[lmeval]'``, then::

    megatron-diffusion lm-eval --model megatron_diffusion \\
        --model_args checkpoint=DIR,strategy=threshold,threshold=0.9 --tasks humaneval ...

``megatron-diffusion lm-eval ARGS`` is lm-eval's own command line with this model registered
first (lm-eval has no plug-in discovery, so the plain ``lm_eval`` command does not know it).
``generate_until`` decodes with our samplers (``strategy`` ``ar``, ``fixed``, ``threshold`` or
``speculative``); ``loglikelihood`` / ``loglikelihood_rolling`` come from ``likelihood`` (exact
with an AR readout, the ELBO bound for diffusion checkpoints). One process (no torchrun / tensor
parallelism through lm-eval). docs/evaluation.md "lm-evaluation-harness" lists the model
arguments.
"""

import re
import subprocess
import sys

from megatron_diffusion.errors import UsageError

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ModuleNotFoundError as e:  # the optional extra
    if not (e.name or "").startswith("lm_eval"):
        raise
    raise UsageError("lm-eval: lm-evaluation-harness is not installed; pip install "
                     "'megatron-diffusion[lmeval]'") from None

MODEL_NAME = "megatron_diffusion"
STRATEGIES = ("ar", "fixed", "threshold", "speculative")
SAMPLER_ARGS = ("block_size", "steps_per_block", "threshold", "draft_len", "temperature", "seed")
DEFAULT_MAX_GEN_TOKS = 256
DEFAULT_AUTO_BATCH = 8


def sampler_knobs(strategy: str, **args) -> dict:
    """``load_sampler`` settings from the model arguments (``strategy=ar``: the AR baseline)."""
    if strategy not in STRATEGIES:
        raise UsageError(f"--model_args strategy: got {strategy!r}, expected one of "
                         f"{', '.join(STRATEGIES)}")
    knobs = {k: v for k, v in args.items() if v is not None}
    if strategy == "ar":
        return {**knobs, "strategy": "fixed", "ar_baseline": True}
    return {**knobs, "strategy": strategy}


def parse_batch_size(value) -> int:
    """lm-eval's ``--batch_size`` (a string on its command line): an integer >= 1, or ``auto``
    / ``auto:N`` (no memory probing here: 8)."""
    text = str(value)
    if text.startswith("auto"):
        return DEFAULT_AUTO_BATCH
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"--batch_size: got {text!r}, expected an integer >= 1 or 'auto'")
    return int(text)


def cut_at_stops(text: str, until: list[str]) -> str:
    """``text`` up to the first occurrence of any stop string (lm-eval's ``until``)."""
    cut = min((i for i in (text.find(s) for s in until if s) if i >= 0), default=len(text))
    return text[:cut]


def _load(checkpoint: str, batch_size: int, knobs: dict):
    """``load_sampler``, its refusals naming the ``--model_args`` key the user typed (they name
    ``sample``'s options: ``--checkpoint: ... does not exist`` -> ``--model_args checkpoint: ...``)."""
    from megatron_diffusion.loading.trained import load_sampler

    try:
        return load_sampler(checkpoint, batch_size=batch_size, **knobs)
    except UsageError as e:
        msg = re.sub(r"^--([a-z][\w-]*)", lambda m: f"--model_args {m[1].replace('-', '_')}", str(e))
        raise UsageError(msg) from None


def name_after_checkpoint(argv: list[str]) -> list[str]:
    """lm-eval names its output folder after ``pretrained=`` (a random name otherwise, the same
    for every run): ``checkpoint=DIR`` in ``--model_args`` is passed on as ``pretrained=DIR``."""
    out, after_flag = [], False
    for arg in argv:
        if (after_flag or arg.startswith("--model_args=")) and not re.search(r"(^|,|=)pretrained=", arg):
            arg = re.sub(r"(^|,|--model_args=)checkpoint=", r"\1pretrained=", arg)
        after_flag = arg == "--model_args"
        out.append(arg)
    return out


@register_model(MODEL_NAME)
class MegatronDiffusionLM(TemplateLM):
    """A megatron-diffusion checkpoint (checkpoint, run directory or HF export) as an lm-eval LM."""

    def __init__(self, checkpoint: str | None = None, strategy: str = "threshold",
                 block_size: int | None = None, steps_per_block: int | None = None,
                 threshold: float | None = None, draft_len: int | None = None,
                 max_new_tokens: int | None = None, temperature: float | None = None,
                 seed: int | None = None, mc_draws: int = 32, batch_size=8,
                 max_batch_size=None, device=None, pretrained: str | None = None, **unknown):
        super().__init__()
        if unknown:
            raise UsageError(f"--model_args: unknown argument(s) {', '.join(sorted(unknown))}; "
                             f"expected checkpoint, strategy, max_new_tokens, mc_draws, "
                             f"{', '.join(SAMPLER_ARGS)}")
        if checkpoint is not None and pretrained is not None:
            raise UsageError("--model_args: checkpoint and pretrained name the same thing; give one")
        checkpoint = checkpoint if checkpoint is not None else pretrained
        if checkpoint is None:
            raise UsageError("--model_args checkpoint: required (checkpoint=DIR)")
        for name, value in (("mc_draws", mc_draws), ("max_new_tokens", max_new_tokens)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise UsageError(f"--model_args {name}: got {value!r}, expected an integer >= 1")
        self.batch_size = parse_batch_size(batch_size)
        self.mc_draws, self.max_new_tokens = mc_draws, max_new_tokens
        knobs = sampler_knobs(strategy, block_size=block_size, steps_per_block=steps_per_block,
                              threshold=threshold, draft_len=draft_len, temperature=temperature,
                              seed=seed)
        self.sampler = _load(str(checkpoint), self.batch_size, knobs)
        self._ignored_told: list[list[str]] = []
        self.tokenizer = self.sampler.tokenizer
        self.loaded = self.sampler.loaded

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def tokenizer_name(self) -> str:
        return str(self.loaded.path).replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
        return self.tokenizer.encode_prompt(string)

    def chat_template(self, chat_template=False) -> str | None:
        """The checkpoint's chat template (``--apply_chat_template``; meta.json
        ``generation.chat_template``)."""
        from megatron_diffusion.sampling.chat import chat_template as carried

        if not chat_template:
            return None
        try:
            return carried(self.loaded.meta, str(self.loaded.path))
        except UsageError as e:
            raise UsageError(str(e).replace("--chat:", "--apply_chat_template:", 1)) from None

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt=True) -> str:
        """lm-eval's turns (system, few-shot, the question) rendered with the checkpoint's
        template, as ``sample --chat`` renders one user message."""
        from megatron_diffusion.sampling.chat import render_messages

        (text,) = render_messages([chat_history], self.chat_template(True), self.tokenizer,
                                  self.loaded.meta, add_generation_prompt,
                                  option="--apply_chat_template")
        return text

    def _label(self, request_type: str) -> str:
        """The progress label: a diffusion checkpoint's score is the ELBO, a bound, and says so."""
        from megatron_diffusion.evaluation.infill import has_ar_readout

        exact = has_ar_readout(self.loaded.config)
        return f"lm-eval {request_type}" + ("" if exact else " (ELBO lower bound)")

    def _score(self, pairs: list[tuple[list[int], list[int]]],
               progress: bool = True) -> list[tuple[float, bool]]:
        """``(log p or its ELBO bound, is_greedy)`` per ``(context, continuation)`` ids pair."""
        from megatron_diffusion.evaluation import likelihood
        from megatron_diffusion.evaluation.infill import has_ar_readout
        from megatron_diffusion.progress import Progress

        try:
            exact = has_ar_readout(self.loaded.config)
            out = []
            with Progress(len(pairs), self._label("loglikelihood"), unit="request",
                          enabled=progress) as bar:
                for first in range(0, len(pairs), self.batch_size):
                    chunk = pairs[first:first + self.batch_size]
                    out += (likelihood.ar_loglikelihood(self.loaded, chunk, self.batch_size)
                            if exact else [(self._elbo(c, y), False) for c, y in chunk])
                    bar.update(len(chunk))
            return out
        except ValueError as e:
            raise UsageError(f"lm-eval loglikelihood: {e}") from None

    def _elbo(self, context: list[int], continuation: list[int]) -> float:
        from megatron_diffusion.evaluation.likelihood import elbo_loglikelihood

        return elbo_loglikelihood(self.loaded, context, continuation, num_draws=self.mc_draws,
                                  seed=self.sampler.cfg.seed, batch_size=self.batch_size)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        results = self._score([(ctx, cont) for _, ctx, cont in requests], not disable_tqdm)
        for (strings, _, _), result in zip(requests, results):
            if strings is not None:
                self.cache_hook.add_partial("loglikelihood", strings, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Whole-text log-likelihood: disjoint windows of the model's length, each scored after
        the text before it (the first after EOS), as lm-eval's HF model does."""
        from megatron_diffusion.evaluation.likelihood import max_length
        from megatron_diffusion.progress import track

        out = []
        for request in track(requests, self._label("loglikelihood_rolling"), unit="text",
                             enabled=not disable_tqdm):
            (text,) = request.args
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.eot_token_id,
                max_seq_len=max_length(self.loaded) - 1, context_len=1)]
            total = sum(logp for logp, _ in self._score(windows, progress=False))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            out.append(total)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Each request's completion through the sampler, cut at its ``until`` strings;
        requests with the same length limit and temperature are decoded together."""
        groups: dict[tuple, list[int]] = {}
        settings = [self._generation_settings(r.args[1]) for r in requests]
        for i, s in enumerate(settings):
            groups.setdefault((s["max_new_tokens"], s["temperature"], s["stop_tokens"]), []).append(i)
        out = [""] * len(requests)
        for (max_new, temperature, stops), members in groups.items():
            sampler = self.sampler.with_settings(max_new_tokens=max_new, temperature=temperature,
                                                 stop_tokens=stops)
            prompts = [self._prompt_ids(requests[i].args[0], max_new) for i in members]
            completions, _ = sampler.generate_ids(prompts, progress=not disable_tqdm,
                                                  label="lm-eval generate_until")
            for i, c in zip(members, completions):
                out[i] = cut_at_stops(sampler.decode(c), settings[i]["until"])
                self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
        return out

    def _generation_settings(self, gen_kwargs: dict) -> dict:
        """The sampler settings of one request's ``gen_kwargs``."""
        from megatron_diffusion.sampling.api import stop_token_ids

        kw = dict(gen_kwargs or {})
        until = kw.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = self.max_new_tokens or int(kw.pop("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
        temperature = float(kw.pop("temperature", self.sampler.cfg.temperature) or 0.0)
        if kw.pop("do_sample", None) is False:
            temperature = 0.0
        if kw and sorted(kw) not in self._ignored_told:  # top_p, top_k: not our samplers' settings
            self._ignored_told.append(sorted(kw))
            print(f"lm-eval: generation_kwargs {', '.join(sorted(kw))} ignored (the samplers take "
                  "until, max_gen_toks, temperature, do_sample)", file=sys.stderr, flush=True)
        single = [ids[0] for ids in (self.tokenizer.encode(s) for s in until) if len(ids) == 1]
        stops = stop_token_ids(self.tokenizer, self.sampler.cfg.stop_tokens, self.loaded.meta)
        return {"until": until, "max_new_tokens": max_new, "temperature": temperature,
                "stop_tokens": tuple(dict.fromkeys((*stops, *single)))}

    def _prompt_ids(self, context: str, max_new: int) -> list[int]:
        """The context's ids, cut from the left to leave room for ``max_new`` tokens."""
        from megatron_diffusion.evaluation.likelihood import max_length

        ids = self.tok_encode(context) or [self.eot_token_id]
        room = max_length(self.loaded) - max_new
        if room < 1:
            raise UsageError(f"lm-eval: max_gen_toks {max_new} leaves no room for a prompt in "
                             f"the model's {max_length(self.loaded)} positions")
        return ids[-room:]


def _git_hash_quietly() -> str | None:
    """lm-eval records ``git describe --always`` of the working directory in its results; outside
    a checkout git printed "fatal: not a git repository" into the user's log. The same value,
    git's own complaint discarded (None outside a checkout, as lm-eval's fallback gives)."""
    try:
        done = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True)
    except FileNotFoundError:  # no git installed
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def harness_main(argv: list[str]) -> int:
    """lm-eval's command line (``lm_eval ARGV``) with ``megatron_diffusion`` registered."""
    import lm_eval.evaluator
    from lm_eval.__main__ import cli_evaluate

    saved = sys.argv, lm_eval.evaluator.get_git_commit_hash
    sys.argv = ["lm_eval", *name_after_checkpoint(argv)]
    lm_eval.evaluator.get_git_commit_hash = _git_hash_quietly
    try:
        cli_evaluate()
    finally:
        sys.argv, lm_eval.evaluator.get_git_commit_hash = saved
    return 0
