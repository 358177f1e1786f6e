"""CGPO from files (`config.algorithm = "cgpo"`): a policy, reward models, judge models and one
prompt file per task -> `cgpo.run_cgpo`.

    python -m jaxalign --config experiments/cgpo_toy.py:smoke --workdir /tmp/cgpo_smoke
    python -m jaxalign --config experiments/cgpo_llama3_70b.py --dry_run   # cgpo_sizing.py

Config sections (experiments/cgpo_toy.py has a complete one):
  model, tokenizer  the policy, as every runner (`runner.load_policy`)
  reward_models  {name: reward model section, as rloo's `reward` (hf_path or a preset;
                 tokenizer, max_length, max_prompt_length, batch_size)}; each loaded once
  judge_models   {name: causal LM section (hf_path or a preset; tokenizer)} for LLM judges
  tasks     {task: dict(prompts=<file> or toy=True, reward=<reward_models key>,
            judges={judge name: dict(kind=<KINDS key>, model=<judge_models key> (LLM kinds),
            ...the judge's keyword arguments)}, and `TASK_FIELDS` (CGPOTask's settings))}
  data      max_length (the sampler's cache and the rows' length), max_prompt_length, chat,
            on_error; toy_prompts (the toy prompts dealt over the toy=True tasks)
  cgpo      `cgpo.CGPOSettings` fields;  optim: make_optimizer arguments
  seed, mesh, workdir;  dry_run_meshes (the dry run's slices)

A prompt row's id is "<task>:<row id>", and everything in the file row besides prompt, messages
and id is its `metadata` for the judges (the answer, the unit tests, the instruction ids). The
toy rule: the toy prompts are dealt round-robin over the toy=True tasks in name order (the
order of config.tasks, a ConfigDict, which sorts its keys; the loop's too), and
each carries `baseline` (its preferred toy completion, a_bar with baseline="data"), `answer`
(that completion's last word) and `instructions` (include that word). With baseline="data" a
file row's `baseline` text is a_bar (`read_task_prompts`). Writes `<workdir>/cgpo.json`
(settings and the last step's metrics). Every task, reward and judge is checked
(`task_specs`) before anything loads.
"""

from __future__ import annotations

import dataclasses
import os

import jax

from jaxalign import io
from jaxalign.algorithms.cgpo import CGPOSettings, CGPOTask, run_cgpo
from jaxalign.algorithms.run_rest import (load_reward, read_prompt_file, score_step,
                                          with_checkpoint_stop_ids)
from jaxalign.algorithms.runner import load_model, load_policy, load_tokenizer
from jaxalign.data import DataError, Encoder, toy
from jaxalign.data.readers import iter_rows
from jaxalign.distributed import barrier
from jaxalign.reward import RewardScorer
from jaxalign.sharding import make_mesh

# A task section's keys that are CGPOTask settings (beside prompts, toy, reward, judges).
TASK_FIELDS = ("optimizer", "samples", "prompts_per_step", "kl_max", "rho", "beta", "lambda_",
               "kl_coef", "baseline")
TASK_KEYS = ("prompts", "toy", "reward", "judges", *TASK_FIELDS)
RULE_KINDS = ("regex", "math", "code", "instructions")  # rule-based judges: no model
LLM_KINDS = ("false_refusal", "factuality", "safety")  # read a judge_models model
KINDS = RULE_KINDS + LLM_KINDS


# ---- the config's tasks ----

@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One task section, checked: its settings, reward model name and judges
    ({name: (kind, model name or None, keyword arguments)})."""

    name: str
    prompts: str  # a prompt file, or "" with toy
    toy: bool
    reward: str
    judges: dict
    settings: dict  # TASK_FIELDS given in the config


def _section(node) -> dict:
    return node.to_dict() if hasattr(node, "to_dict") else dict(node)


def task_specs(config, need_prompts: bool = True) -> list[TaskSpec]:
    """The config's tasks, checked without loading anything: known keys, a reward model of
    `reward_models`, judges of known kinds (LLM kinds naming a `judge_models` model), and with
    `need_prompts` a prompt file or toy=True (a dry run reads none); every error names the
    task and the key."""
    tasks = _section(config.get("tasks") or {})
    if not tasks:
        raise ValueError("config.tasks: CGPO needs at least one task")
    rewards, judge_models = config.get("reward_models") or {}, config.get("judge_models") or {}
    specs, used_rewards = [], set()
    for name, t in tasks.items():
        where = f"config.tasks.{name}"
        unknown = sorted(set(t) - set(TASK_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown key {unknown[0]!r}; known: {sorted(TASK_KEYS)}")
        if t.get("reward") not in rewards:
            raise ValueError(f"{where}.reward: {t.get('reward')!r} is not a key of "
                             f"config.reward_models ({sorted(rewards)})")
        if need_prompts and bool(t.get("toy")) == bool(t.get("prompts")):
            raise ValueError(f"{where}: give prompts (a prompt file) or toy=True, not "
                             f"{'both' if t.get('toy') else 'neither'}")
        judges = {}
        for jname, j in (t.get("judges") or {}).items():
            j = dict(j)
            kind, model = j.pop("kind", None), j.pop("model", None)
            if kind not in KINDS:
                raise ValueError(f"{where}.judges.{jname}.kind: {kind!r} is not one of {KINDS}")
            if kind in LLM_KINDS and model not in judge_models:
                raise ValueError(f"{where}.judges.{jname}.model: {model!r} is not a key of "
                                 f"config.judge_models ({sorted(judge_models)})")
            if kind in RULE_KINDS and model is not None:
                raise ValueError(f"{where}.judges.{jname}.model: a {kind} judge reads no model")
            judges[jname] = (kind, model, j)
        used_rewards.add(t["reward"])
        specs.append(TaskSpec(name, t.get("prompts") or "", bool(t.get("toy")), t["reward"],
                              judges, {k: t[k] for k in TASK_FIELDS if k in t}))
    unused = sorted(set(rewards) - used_rewards)
    if unused:
        raise ValueError(f"config.reward_models.{unused[0]}: no task names it as its reward")
    unused = sorted(set(judge_models) - set(resident_judge_models(specs)))
    if unused:
        raise ValueError(f"config.judge_models.{unused[0]}: no judge reads it")
    return specs


def resident_judge_models(specs: list[TaskSpec]) -> list[str]:
    """The judge_models keys some LLM judge reads (each loaded once), in first-use order."""
    return list(dict.fromkeys(m for s in specs for _, m, _ in s.judges.values() if m))


def toy_paths(config, specs: list[TaskSpec]) -> dict[str, str]:
    """{task: toy prompt file under workdir/data} for the toy=True tasks (the module's rule)."""
    names = [s.name for s in specs if s.toy]
    if not names:
        return {}
    rows = toy.preference_rows(config.data.toy_prompts, 0)
    rows = list({r["prompt"]: r for r in rows}.values())  # the toy generator repeats some
    paths = {}
    for i, name in enumerate(names):
        path = os.path.join(config.workdir, "data", f"prompts_{name}.jsonl")
        if not io.is_committed(path) and jax.process_index() == 0:
            io.write_jsonl(path, ({"prompt": r["prompt"], "baseline": r["chosen"],
                                   "answer": r["chosen"].split()[-1],
                                   "instructions": [{"id": "keywords:existence", "kwargs": {
                                       "keywords": [r["chosen"].split()[-1]]}}]}
                                  for r in rows[i::len(names)]))
        paths[name] = path
    barrier("jaxalign_toy_data")
    return paths


def read_task_prompts(spec: TaskSpec, path: str, tokenizer, d) -> list[dict]:
    """The task's prompt rows {"id": "<task>:<id>", "prompt", "prompt_tokens", "metadata"}
    (prompts longer than max_prompt_length left out, counted). With baseline="data" each file
    row's `baseline` (a_bar's text, e.g. the SFT data's preferred response) becomes
    `baseline_tokens`, cut to fit max_length (counted)."""
    meta = {}
    for _, index, row in iter_rows(path):
        if not isinstance(row, DataError):
            meta[str(row.get("id", index))] = {k: v for k, v in row.items()
                                               if k not in ("prompt", "messages", "id")}
    enc, rows, cut = Encoder(tokenizer, chat=d.chat), [], 0
    for p in read_prompt_file(path, tokenizer, d, name=f"task {spec.name}"):
        m = meta[str(p["id"])]
        row = {**p, "id": f"{spec.name}:{p['id']}", "metadata": m,
               "prompt_tokens": enc.encode_prompt(p["prompt"], str(p["id"]))}
        if spec.settings.get("baseline") == "data":
            if not isinstance(m.get("baseline"), str):
                raise ValueError(f"config.tasks.{spec.name}: baseline='data' but row "
                                 f"{p['id']!r} of {path} has no 'baseline' text")
            _, c = enc.encode(p["prompt"], m["baseline"], str(p["id"]))
            room = d.max_length - len(row["prompt_tokens"])
            cut += len(c) > room
            row["baseline_tokens"] = c[:room]
        rows.append(row)
    if cut:
        print(f"task {spec.name}: {cut} baseline responses cut to fit max_length "
              f"{d.max_length}", flush=True)
    if not rows:
        raise ValueError(f"config.tasks.{spec.name}: {path} has no usable prompt")
    return rows


# ---- models and judges ----

def make_judge(task: str, name: str, kind: str, kwargs: dict, llm):
    """The judge `name` of `task`: a rule judge of `kind`, or `llm` = (cfg, params, tokenizer,
    mesh) read through kind's LLM judge; a bad keyword is an error naming task and judge."""
    from jaxalign.reward import (CodeJudge, InstructionJudge, MathAnswerJudge,
                                 RegexAnswerJudge, factuality_judge, false_refusal_judge,
                                 safety_judge)
    rules = {"regex": RegexAnswerJudge, "math": MathAnswerJudge, "code": CodeJudge,
             "instructions": InstructionJudge}
    llms = {"false_refusal": false_refusal_judge, "factuality": factuality_judge,
            "safety": safety_judge}
    try:
        if kind in rules:
            return rules[kind](name=name, **kwargs)
        cfg, params, tokenizer, mesh = llm
        return llms[kind](cfg, params, tokenizer, mesh=mesh, name=name, **kwargs)
    except TypeError as e:
        raise ValueError(f"config.tasks.{task}.judges.{name} ({kind}): {e}") from None


def _check_vocab(where: str, tokenizer, cfg) -> None:
    if len(tokenizer) > cfg.vocab_size:
        raise ValueError(f"{where}: the tokenizer has {len(tokenizer)} tokens but the model's "
                         f"vocab_size is {cfg.vocab_size}")


def run(config) -> dict:
    """CGPO for `config.cgpo.steps` steps (resuming from the workdir's checkpoint); returns
    run_cgpo's result and writes `<workdir>/cgpo.json`."""
    specs = task_specs(config)
    s = CGPOSettings(**config.cgpo.to_dict())
    io.makedirs(config.workdir)
    mesh = make_mesh(**config.mesh)
    tokenizer, cfg, params = load_policy(config, mesh)
    cfg = with_checkpoint_stop_ids(cfg, config.model)
    toys = toy_paths(config, specs)
    prompts = {sp.name: read_task_prompts(sp, toys.get(sp.name) or sp.prompts, tokenizer,
                                          config.data) for sp in specs}
    # a random init (a preset, no hf_path) gets its own seed: no two models start alike
    scores = {}
    for i, name in enumerate(dict.fromkeys(sp.reward for sp in specs)):
        rc = config.reward_models[name]
        tok = load_tokenizer(rc.get("tokenizer") or config.tokenizer)
        rcfg, rparams = load_reward(rc, config.seed + 10 * (i + 1), mesh, tok.pad_token_id)
        _check_vocab(f"config.reward_models.{name}", tok, rcfg)
        scores[name] = score_step(RewardScorer(
            rcfg, rparams, tok, mesh=mesh, batch_size=rc.batch_size, max_length=rc.max_length,
            max_prompt_length=rc.max_prompt_length))
    llms = {}
    for i, name in enumerate(resident_judge_models(specs)):
        mc = config.judge_models[name]
        jcfg, jparams = load_model(mc, config.seed + 1000 + i, mesh)
        tok = load_tokenizer(mc.get("tokenizer") or config.tokenizer)
        _check_vocab(f"config.judge_models.{name}", tok, jcfg)
        llms[name] = (jcfg, jparams, tok, mesh)
    tasks = [CGPOTask(sp.name, prompts[sp.name], score=scores[sp.reward],
                      judges=[make_judge(sp.name, j, kind, kw, llms.get(m))
                              for j, (kind, m, kw) in sp.judges.items()], **sp.settings)
             for sp in specs]
    out = run_cgpo(s, tasks, policy=(cfg, params), tokenizer=tokenizer, workdir=config.workdir,
                   optim=config.optim.to_dict(), seed=config.seed,
                   max_len=config.data.max_length, mesh=mesh)
    last = out["history"][-1] if out["history"] else None
    if jax.process_index() == 0:
        io.write_json(os.path.join(config.workdir, "cgpo.json"),
                      {"settings": config.cgpo.to_dict(), "tasks": _section(config.tasks),
                       "last": last})
    for sp in specs:
        m = last or {}
        print(f"CGPO task {sp.name}: reward {m.get(f'{sp.name}/reward', float('nan')):.4f}, "
              f"violation {m.get(f'{sp.name}/violation', float('nan')):.3f}, "
              f"KL {m.get(f'{sp.name}/kl', float('nan')):.4f}", flush=True)
    return out
