"""``megatron-diffusion lm-eval``: lm-evaluation-harness runs on tiny checkpoints, offline, on
local YAML tasks over a small jsonl (no dataset can be downloaded here)."""

import json
import os
from pathlib import Path

import pytest
import torch

from megatron_diffusion.cli import main
from megatron_diffusion.masks.config import AttentionConfig
from tests.helpers import make_checkpoint

pytest.importorskip("lm_eval", reason="lm-eval not installed (the [lmeval] extra: "
                                      "pip install 'megatron-diffusion[lmeval]')")

ROWS = [{"prompt": "def add(a, b):\n    return", "answer": " a + b", "choices": ["a + b", "a - b"], "label": 0},
        {"prompt": "import os\nimport", "answer": " sys", "choices": ["sys", "json", "re"], "label": 0},
        {"prompt": "for i in range(", "answer": "10):", "choices": ["10):", "n):"], "label": 1}]
GEN_TASK = """task: md_tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n", ")"]
  max_gen_toks: 12
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""
CHOICE_TASK = """task: md_tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
ROLLING_TASK = """task: md_tiny_rolling
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{prompt}}}}{{{{answer}}}}"
metric_list:
  - metric: word_perplexity
"""
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TASKS = {"gen": "md_tiny_gen", "choice": "md_tiny_choice", "rolling": "md_tiny_rolling"}


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    d = tmp_path_factory.mktemp("tasks")
    data = d / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (d / "gen.yaml").write_text(GEN_TASK.format(data=data))
    (d / "choice.yaml").write_text(CHOICE_TASK.format(data=data))
    (d / "rolling.yaml").write_text(ROLLING_TASK.format(data=data))
    return d


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmeval_ckpt")
    return {"causal": make_checkpoint(root / "causal", attention=AttentionConfig(mode="causal"),
                                      logit_shift=True),
            "spec": make_checkpoint(root / "spec", logit_shift=True,
                                    attention=AttentionConfig(mode="block", block_size=4,
                                                              clean_stream="causal")),
            "block": make_checkpoint(root / "block"),
            "chat": make_checkpoint(root / "chat", special_tokens=("<|im_start|>", "<|im_end|>"),
                                    meta_fields={"generation": {"chat_template": TEMPLATE}})}


def _run(tasks: Path, out: Path, model_args: str, monkeypatch, kinds=("gen", "choice"),
         extra=()) -> dict[str, list[dict]]:
    """One ``megatron-diffusion lm-eval`` run on local tasks: per task, its logged samples."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["lm-eval", "--model", "megatron_diffusion", "--model_args", model_args,
                 "--tasks", ",".join(TASKS[k] for k in kinds), "--include_path", str(tasks),
                 "--batch_size", "2", "--output_path", str(out), "--log_samples", *extra]) == 0
    samples = {}
    for f in out.rglob("samples_*.jsonl"):
        kind = next(k for k, name in TASKS.items() if f.name.startswith(f"samples_{name}_"))
        samples[kind] = sorted((json.loads(line) for line in f.read_text().splitlines()),
                               key=lambda s: s["doc_id"])
    assert set(samples) == set(kinds)
    return samples


def _scored(samples: list[dict]):
    """(context, continuation, logprob, is_greedy) of every choice of every document."""
    for s in samples:
        for args, (logp, greedy) in zip(s["arguments"].values(), s["filtered_resps"]):
            yield args["arg_0"], args["arg_1"], float(logp), greedy == "True"


def _causal_logp(loaded, row: list[int]) -> torch.Tensor:
    L = len(row)
    mask = ~torch.tril(torch.ones(L, L, dtype=torch.bool))
    with torch.no_grad():
        logits = loaded.model(torch.tensor([row]), torch.arange(L)[None], mask[None, None])
    return torch.log_softmax(logits.float(), -1)[0]


def test_causal_checkpoint_generates_the_ar_decode_and_scores_exactly(checkpoints, tasks, tmp_path,
                                                                      monkeypatch):
    from megatron_diffusion.loading.trained import load_sampler

    samples = _run(tasks, tmp_path / "out", f"checkpoint={checkpoints['causal']},strategy=ar", monkeypatch,
                   kinds=("gen", "choice", "rolling"))
    # lm-eval names the output folder after the checkpoint (a fixed random name without it)
    assert [d.name for d in (tmp_path / "out").iterdir()] == [str(checkpoints["causal"]).replace("/", "__")]
    sampler = load_sampler(checkpoints["causal"], ar_baseline=True, max_new_tokens=12)
    expected = [r.text for r in sampler.complete([r["prompt"] for r in ROWS])]
    got = [s["filtered_resps"][0] for s in samples["gen"]]
    assert got == [text.split("\n")[0].split(")")[0] for text in expected]

    tok, loaded = sampler.tokenizer, sampler.loaded
    scored = list(_scored(samples["choice"]))
    assert len(scored) == sum(len(r["choices"]) for r in ROWS)
    for context, continuation, logp, greedy in scored:
        ids = tok.encode_prompt(context)
        cont = tok.encode_prompt(context + continuation)[len(ids):]
        read = _causal_logp(loaded, ids + cont)[len(ids) - 1:len(ids) - 1 + len(cont)]
        assert logp == pytest.approx(sum(float(read[j, t]) for j, t in enumerate(cont)), rel=1e-5)
        assert greedy == all(int(read[j].argmax()) == t for j, t in enumerate(cont))

    for s, row in zip(samples["rolling"], ROWS):  # the whole text after EOS, one window
        ids = tok.encode_prompt(row["prompt"] + row["answer"])
        logp_LV = _causal_logp(loaded, [tok.eos_id] + ids)
        hand = sum(float(logp_LV[j, t]) for j, t in enumerate(ids))
        assert float(s["filtered_resps"][0]) == pytest.approx(hand, rel=1e-5)


def test_self_speculative_generation_is_the_ar_generation(checkpoints, tasks, tmp_path, monkeypatch):
    ar = _run(tasks, tmp_path / "ar", f"checkpoint={checkpoints['spec']},strategy=ar", monkeypatch)
    spec = _run(tasks, tmp_path / "spec", f"checkpoint={checkpoints['spec']},strategy=speculative",
                monkeypatch)
    assert [s["filtered_resps"] for s in spec["gen"]] == [s["filtered_resps"] for s in ar["gen"]]
    assert [s["filtered_resps"] for s in spec["choice"]] == [s["filtered_resps"] for s in ar["choice"]]


def test_diffusion_checkpoint_scores_the_elbo_with_its_draws(checkpoints, tasks, tmp_path, monkeypatch,
                                                             capfd):
    from megatron_diffusion.loading.trained import load_sampler
    from megatron_diffusion.evaluation.likelihood import elbo_loglikelihood

    monkeypatch.chdir(tmp_path)  # outside any git checkout: lm-eval asks git for a commit hash
    samples = _run(tasks, tmp_path / "out", f"checkpoint={checkpoints['block']},strategy=threshold,"
                   "threshold=0.5,mc_draws=3,seed=5", monkeypatch, kinds=("gen", "choice", "rolling"))
    err = capfd.readouterr().err  # a bound is labelled as one, for both request types
    assert "lm-eval loglikelihood (ELBO lower bound)" in err
    assert "lm-eval loglikelihood_rolling (ELBO lower bound)" in err
    assert "not a git repository" not in err
    assert all(isinstance(s["filtered_resps"][0], str) for s in samples["gen"])
    sampler = load_sampler(checkpoints["block"])
    tok = sampler.tokenizer
    for context, continuation, logp, greedy in _scored(samples["choice"]):
        ids = tok.encode_prompt(context)
        cont = tok.encode_prompt(context + continuation)[len(ids):]
        bound = elbo_loglikelihood(sampler.loaded, ids, cont, num_draws=3, seed=5)
        assert logp == pytest.approx(bound, rel=1e-5) and not greedy


def test_apply_chat_template_renders_the_checkpoints_template(checkpoints, tasks, tmp_path,
                                                               monkeypatch, capsys):
    from megatron_diffusion.loading.trained import load_sampler

    samples = _run(tasks, tmp_path / "out", f"checkpoint={checkpoints['chat']},strategy=ar", monkeypatch,
                   kinds=("gen",), extra=("--apply_chat_template",))
    rendered = [f"<|im_start|>user\n{r['prompt']}<|im_end|>\n<|im_start|>assistant\n" for r in ROWS]
    assert [s["arguments"]["gen_args_0"]["arg_0"] for s in samples["gen"]] == rendered
    sampler = load_sampler(checkpoints["chat"], ar_baseline=True, max_new_tokens=12)
    expected = [r.text.split("\n")[0].split(")")[0] for r in sampler.complete(rendered)]
    assert [s["filtered_resps"][0] for s in samples["gen"]] == expected
    capsys.readouterr()
    assert main(["lm-eval", "--model", "megatron_diffusion", "--model_args",
                 f"checkpoint={checkpoints['causal']}", "--tasks", "md_tiny_gen", "--include_path",
                 str(tasks), "--apply_chat_template"]) == 2
    assert "--apply_chat_template: " in capsys.readouterr().err.strip().splitlines()[-1]


def test_bad_model_arguments_are_one_line(checkpoints, tasks, tmp_path, monkeypatch, capsys):
    for args, message in ((f"checkpoint={checkpoints['causal']},strategy=bogus",
                           "--model_args strategy: got 'bogus', expected one of ar, fixed"),
                          (f"checkpoint={checkpoints['causal']},mc_draw=3",
                           "--model_args: unknown argument(s) mc_draw"),
                          (f"checkpoint={checkpoints['causal']},strategy=speculative",
                           "--model_args strategy speculative: needs a block-mode model"),
                          (f"checkpoint={tmp_path / 'nope'}", "--model_args checkpoint: "),
                          (f"checkpoint={checkpoints['causal']},threshold=abc",
                           "--model_args threshold: got 'abc'"),
                          (f"checkpoint={checkpoints['causal']},pretrained={checkpoints['causal']}",
                           "--model_args: checkpoint and pretrained name the same thing"),
                          (f"checkpoint={checkpoints['causal']} --batch_size x",
                           "--batch_size: got 'x', expected an integer >= 1 or 'auto'")):
        model_args, *more = args.split()
        assert main(["lm-eval", "--model", "megatron_diffusion", "--model_args", model_args,
                     "--tasks", "md_tiny_gen", "--include_path", str(tasks), *more]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("megatron-diffusion lm-eval: error: ") and message in err[-1]
    assert not os.path.exists(tmp_path / "out")


def test_checkpoint_is_passed_on_as_pretrained():
    from megatron_diffusion.evaluation.lm_eval_model import name_after_checkpoint

    assert name_after_checkpoint(["--model_args", "checkpoint=d,strategy=ar", "--tasks", "t"]) == \
        ["--model_args", "pretrained=d,strategy=ar", "--tasks", "t"]
    assert name_after_checkpoint(["--model_args=strategy=ar,checkpoint=d"]) == \
        ["--model_args=strategy=ar,pretrained=d"]
    assert name_after_checkpoint(["--tasks", "checkpoint=x", "--model_args", "mycheckpoint=d"]) == \
        ["--tasks", "checkpoint=x", "--model_args", "mycheckpoint=d"]
