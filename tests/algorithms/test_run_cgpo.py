"""CGPO from files (`config.algorithm = "cgpo"`, jaxalign/algorithms/run_cgpo.py): the toy
smoke through the entry point, config errors, prompt rows with metadata, the Llama-3-70B
paper config's dry run.

    .venv/bin/python -m pytest -q -n 0 tests/algorithms/test_run_cgpo.py   # ~40 s on 2 cores
"""

import json

import pytest

from experiments import cgpo_llama3_70b, cgpo_toy
from jaxalign.algorithms import cgpo_sizing, run_cgpo
from jaxalign.data import toy
from jaxalign.main import run_config
from jaxalign.models.presets import preset
from jaxalign.models.sizing import param_count


def test_llama_3_70b_preset_has_70_55b_parameters():
    assert param_count(preset("llama-3-70b")) == pytest.approx(70.55e9, rel=0.005)


def test_cgpo_runner_from_files_through_the_entry_point(tmp_path):
    """experiments/cgpo_toy.py:smoke via `jaxalign.main`: two toy tasks, each step's per-task
    reward, violation (per judge), KL and loss in metrics.jsonl; cgpo.json written (resuming
    is run_cgpo's, tested in test_cgpo.py)."""
    c = cgpo_toy.get_config("smoke")
    c.workdir = str(tmp_path)
    out = run_config(c)
    assert [h["step"] for h in out["history"]] == [1, 2]
    summary = json.loads((tmp_path / "cgpo.json").read_text())
    assert summary["settings"]["steps"] == 2 and summary["last"]["step"] == 2
    assert set(summary["tasks"]) == {"chat", "words"}
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    rollout = [r for r in rows if any(k.startswith("rollout/") for k in r)]
    assert [r["step"] for r in rollout] == [1, 2]
    per_task = {"chat": ("reward", "calibrated_reward", "violation", "violation/safe", "kl",
                         "loss", "kept"),
                "words": ("reward", "violation", "violation/final_word",
                          "violation/includes", "kl", "loss", "kept", "skipped")}
    for r in rollout:
        for task, keys in per_task.items():
            for k in keys:
                assert f"rollout/{task}/{k}" in r, (task, k)
            assert 0.0 <= r[f"rollout/{task}/violation"] <= 1.0
    # step 1 samples from the reference itself; step 2 from the updated policy
    assert all(rollout[0][f"rollout/{t}/kl"] == 0.0 for t in per_task)
    assert any(rollout[1][f"rollout/{t}/kl"] != 0.0 for t in per_task)
    # the toy rule: the toy prompts dealt round-robin, disjoint, metadata carried
    chat = [json.loads(x) for x in open(tmp_path / "data" / "prompts_chat.jsonl")]
    words = [json.loads(x) for x in open(tmp_path / "data" / "prompts_words.jsonl")]
    assert not {r["prompt"] for r in chat} & {r["prompt"] for r in words}
    assert all(r["answer"] == r["baseline"].split()[-1] for r in chat + words)


def _toy_with(change):
    c = cgpo_toy.get_config("smoke")
    change(c)
    return c


def _judge_kind(c):
    c.tasks.words.judges.includes.kind = "rubric"


def _reward_name(c):
    c.tasks.chat.reward = "helpfull"


def _task_key(c):
    c.tasks.words.temperature = 0.7


def _judge_model(c):
    c.tasks.chat.judges.safe.model = "big_judge"


def _rule_with_model(c):
    c.tasks.words.judges.final_word.model = "tiny_judge"


def _unused_reward(c):
    c.tasks.words.reward = "helpful"


def _unused_judge_model(c):
    c.judge_models.spare = dict(c.judge_models.tiny_judge)


def _prompts_and_toy(c):
    c.tasks.chat.prompts = "/data/chat.jsonl"


@pytest.mark.parametrize("change,message", [
    (_judge_kind, r"config\.tasks\.words\.judges\.includes\.kind: 'rubric' is not one of"),
    (_reward_name, r"config\.tasks\.chat\.reward: 'helpfull' is not a key of "
                   r"config\.reward_models"),
    (_task_key, r"config\.tasks\.words: unknown key 'temperature'"),
    (_judge_model, r"config\.tasks\.chat\.judges\.safe\.model: 'big_judge' is not a key of "
                   r"config\.judge_models"),
    (_rule_with_model, r"config\.tasks\.words\.judges\.final_word\.model: a regex judge "
                       r"reads no model"),
    (_unused_reward, r"config\.reward_models\.engaging: no task names it"),
    (_unused_judge_model, r"config\.judge_models\.spare: no judge reads it"),
    (_prompts_and_toy, r"config\.tasks\.chat: give prompts .* not both"),
], ids=["unknown_judge_kind", "reward_names_no_model", "unknown_task_key",
        "unknown_judge_model", "rule_judge_with_model", "unused_reward_model",
        "unused_judge_model", "prompts_and_toy"])
def test_bad_config_is_an_error_naming_task_and_key(tmp_path, change, message):
    c = _toy_with(change)
    c.workdir = str(tmp_path)
    with pytest.raises(ValueError, match=message):
        run_config(c)
    assert not (tmp_path / "data").exists()  # checked before anything is written or loaded


def test_a_bad_judge_argument_names_task_and_judge():
    with pytest.raises(ValueError, match=r"config\.tasks\.words\.judges\.final_word "
                                         r"\(regex\): .*'patern'"):
        run_cgpo.make_judge("words", "final_word", "regex", {"patern": "x"}, None)


def test_task_prompts_carry_metadata_and_the_baseline(tmp_path):
    """A file row's fields besides prompt/id are its metadata; ids are "<task>:<id>";
    baseline="data" encodes the row's `baseline` text as a_bar, cut to fit max_length."""
    path = tmp_path / "math.jsonl"
    rows = [{"id": "a", "prompt": "tell me about", "answer": "7", "baseline": " good day"},
            {"prompt": "describe your garden", "tests": ["assert True"],
             "baseline": " the cat saw the river and the sky and the tree"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = cgpo_toy.get_config("smoke")
    c.data.max_length = 12
    c.tasks.words.update(toy=False, prompts=str(path), baseline="data")
    spec = next(s for s in run_cgpo.task_specs(c) if s.name == "words")
    tok = toy.word_tokenizer()
    got = run_cgpo.read_task_prompts(spec, str(path), tok, c.data)
    assert [r["id"] for r in got] == ["words:a", "words:1"]
    assert got[0]["metadata"] == {"answer": "7", "baseline": " good day"}
    assert got[1]["metadata"]["tests"] == ["assert True"]
    first = tok(" good day", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert got[0]["baseline_tokens"] == first
    assert len(got[1]["prompt_tokens"]) + len(got[1]["baseline_tokens"]) == 12  # cut


@pytest.mark.parametrize("arg", ["", "crpg", "crraft", "codpo"])
def test_paper_config_global_batch_is_1024(arg):
    """Sum over tasks of prompts_per_step * K is 1024 rows; CRRAFT tasks add a_bar's row."""
    c = cgpo_llama3_70b.get_config(arg)
    specs = run_cgpo.task_specs(c, need_prompts=False)
    assert len(specs) == 6 and c.cgpo.steps == 600
    assert sum(t.prompts_per_step * t.samples for t in c.tasks.values()) == 1024
    crraft = sum(t.prompts_per_step for t in c.tasks.values() if t.optimizer == "crraft")
    assert cgpo_sizing.step_rows(specs) == 1024 + crraft
    assert crraft == {"": 64, "crpg": 0, "crraft": 192, "codpo": 0}[arg]


def test_paper_config_dry_run_counts_every_resident_model(capsys):
    """cgpo_llama3_70b --dry_run: per slice, training and sampling phases whose totals are the
    sum of their parts; the policy, the reference, 3 reward models and 3 LLM judges named
    and counted; the sampling KV cache and the params per device by hand."""
    c = cgpo_llama3_70b.get_config()
    report = run_config(c, dry_run=True)
    resident = report["resident"]
    assert set(resident) == {"policy", "reference", "reward:helpfulness", "reward:engagement",
                             "reward:safety", "judge:false_refusal_8b", "judge:factuality_70b",
                             "judge:llamaguard2_8b"}
    n70, n8 = 70_553_706_496, 8_030_261_248
    rm = n70 - 128256 * 8192 + 8192  # no LM head; a [D, 1] score head
    assert resident["policy"][1] == resident["reference"][1] == n70
    assert [resident[f"reward:{k}"][1] for k in ("helpfulness", "engagement", "safety")] == [rm] * 3
    assert [resident[f"judge:{k}"][1] for k in ("false_refusal_8b", "factuality_70b",
                                                 "llamaguard2_8b")] == [n8, n70, n8]
    assert report["rows"] == 1088 and {"loss", "grad_norm"} <= set(report["metrics"])
    assert set(report["estimates"]) == {"v5p-128", "v5p-256", "v5p-512", "v5p-1024"}
    for mesh, est in report["estimates"].items():
        training, sampling = report["phases"][mesh]
        assert len(est.models) == 6 and all(b > 0 for b in est.models.values())
        assert training.other_models == sampling.other_models == sum(est.models.values())
        assert training.total == (est.params + est.reference + est.optimizer + est.gradients
                                  + est.activations + sum(est.models.values()))
        assert sampling.total == (est.params + est.reference + est.optimizer + est.kv_cache
                                  + sum(est.models.values()))
        assert training.kv_cache == sampling.gradients == sampling.activations == 0
        assert est.total == max(training.total, sampling.total)
    chips = 128
    est = report["estimates"]["v5p-256"]
    assert est.params == est.reference == n70 * 4 // chips  # float32 policy and reference
    assert est.models["judge:factuality_70b"] == n70 * 2 // chips  # bf16
    assert est.models["reward:safety"] == (rm - 8192) * 2 // chips + 8192 * 2  # head replicated
    # 64 prompts over 128 chips: 1 prompt row per chip x K=8 (the IF task; chat's is 1 x 4);
    # slots: prompt bucket 1024 + 1024 new - 1; K and V of 80 layers x 8 heads x 128, bf16,
    # plus a bool slot mask
    assert est.kv_cache == 8 * (2 * 80 * 8 * 128 * 2047 * 2 + 2047)
    out = capsys.readouterr().out
    assert out.count("  training ") == out.count("  sampling ") == 4
    for label in resident:
        assert out.count(f"  {label} ") >= (2 if label != "policy" else 1), label
