"""ReST from files (`config.algorithm = "rest"`): a policy, a scalar reward model, an SFT file
(the original dataset D) and a prompt file (the held-out prompts) -> `rest.run_rest`.

    python -m jaxalign --config experiments/rest_llama3_8b.py:smoke --workdir /tmp/rest_smoke
    python -m jaxalign --config experiments/rest_llama3_8b.py --dry_run

Config sections (experiments/rest_llama3_8b.py has a complete one):
  model      the policy: preset (random init) or hf_path; dtype overrides (runner.load_model)
  tokenizer  the policy's: "toy" or a local directory
  reward     hf_path (a HF `*ForSequenceClassification` dir, `reward.load_reward_hf`) or
             preset + vocab_size (a random reward model, for smoke runs); tokenizer (a local
             dir; "" = the policy's); max_length, max_prompt_length, batch_size; dtype overrides
  data       train (SFT JSONL/Parquet of {"prompt", "completion"} or {"messages"}: D), eval (a
             prompt file: the held-out prompts), or toy=True (toy_train / toy_eval rows written
             under workdir/data); train_rows / eval_rows (the first N good rows; 0: all);
             max_length (also the sampler's cache and the training rows' length),
             max_prompt_length, truncation_mode, chat, on_error
  rest       `rest.RestSettings` fields;  optim: make_optimizer arguments (lr: BC's)
  batch_size, seed, mesh, workdir, start_over;  dry_run_meshes (the dry run's slices)

D is tokenized by `load_dataset("sft", ...)`, so its ids are the data pipeline's (prompt with
BOS / chat template, completion with EOS); each record keeps its row's prompt and completion
text (the reward model reads text, through its own tokenizer) and its row index as prompt id.
With `data.chat` a string prompt is passed on as one user turn, so the sampler and the reward
model render the chat template as the data pipeline did. The grow step samples from the
prompt's text, so a row whose prompt the pipeline cut to max_prompt_length is left out of D
(and such a held-out prompt too), counted in the log. Writes `<workdir>/rest_stages.json`.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from jaxalign import io
from jaxalign.algorithms.rest import rest_settings, run_rest
from jaxalign.algorithms.runner import (load_policy, load_split, load_tokenizer, model_overrides,
                                        resolve_model_config)
from jaxalign.data import Encoder, read_examples, toy
from jaxalign.models import init_params
from jaxalign.models.sizing import abstract_mesh, param_bytes_per_device, param_count
from jaxalign.models.transformer import init_cache
from jaxalign.objectives import rest_objective
from jaxalign.reward import RewardScorer, init_reward_params, load_reward_hf, reward_logical_axes
from jaxalign.reward.model import backbone_config
from jaxalign.sharding import make_mesh
from jaxalign.train.memory import MemoryEstimate, estimate_training_memory
from jaxalign.train.optim import make_optimizer
from jaxalign.train.trainer import place_params

# Copies of the policy's params outside the train state while a stage trains: the starting
# weights (run_rest keeps them), the policy handed on by the previous stage, and the sampler's
# decode-layout copy (used by the held-out evaluation).
POLICY_COPIES = 3


# ---- data ----

def data_paths(config) -> tuple[str, str]:
    """(D's SFT file, the held-out prompt file): `data.train` / `data.eval`, or with
    `data.toy` toy files under workdir/data (toy.preference_rows: prompt + chosen)."""
    d = config.data
    if not d.get("toy"):
        return d.train, d.eval
    root = os.path.join(config.workdir, "data")
    train, held = os.path.join(root, "train_sft.jsonl"), os.path.join(root, "eval_prompts.jsonl")
    if not io.is_committed(train) and jax.process_index() == 0:
        io.write_jsonl(train, ({"prompt": r["prompt"], "completion": r["chosen"]}
                               for r in toy.preference_rows(d.toy_train, 0)))
    if not io.is_committed(held) and jax.process_index() == 0:
        io.write_jsonl(held, ({"prompt": r["prompt"]} for r in toy.preference_rows(d.toy_eval, 1)))
    return train, held


def _as_turns(prompt, chat: bool):
    return [{"role": "user", "content": prompt}] if chat and isinstance(prompt, str) else prompt


def read_d(path: str, tokenizer, d) -> list[dict]:
    """D as run_rest's rows {"id" (row index), "prompt", "completion" (text), "prompt_tokens",
    "tokens"}: the token ids of load_dataset("sft"), the text of the same rows."""
    ds = load_split("sft", path, tokenizer, "train", max_length=d.max_length,
                    max_prompt_length=d.max_prompt_length, truncation_mode=d.truncation_mode,
                    chat=d.chat, on_error=d.on_error)
    # load_dataset skips bad rows (reader or tokenizer errors); `locations` names the kept ones
    examples = {ex["location"]: ex for ex in read_examples("sft", path, on_error="skip")}
    enc = Encoder(tokenizer, chat=d.chat)
    rows, cut = [], 0
    for loc, rec in zip(ds.locations, ds.records):
        ex = examples[loc]
        if len(enc.encode_prompt(ex["prompt"], loc)) > len(rec["prompt"]):
            cut += 1  # its prompt was truncated: the sampler could not grow from its text
            continue
        c = ex["completion"]
        rows.append({"id": ex["row"], "prompt": _as_turns(ex["prompt"], d.chat),
                     "completion": c["content"] if isinstance(c, dict) else c,
                     "prompt_tokens": rec["prompt"].tolist(), "tokens": rec["completion"].tolist()})
        if len(rows) == d.get("train_rows", 0):
            break
    print(f"D: {len(rows)} rows of {path} ({len(ds)} good; {cut} left out: the pipeline cut "
          f"their prompt to {d.max_prompt_length} tokens)", flush=True)
    if not rows:
        raise ValueError(f"{path}: no usable row for D")
    return rows


def read_prompt_file(path: str, tokenizer, d, *, limit: int = 0, name: str = "prompts",
                     id_prefix: str = "") -> list[dict]:
    """Prompts {"id": id_prefix + row id, "prompt"} of a prompt file, the first `limit` usable
    ones (0: all); prompts longer than `d.max_prompt_length` are left out and counted."""
    enc, out, cut = Encoder(tokenizer, chat=d.chat), [], 0
    for ex in read_examples("prompt", path, on_error=d.on_error):
        if len(enc.encode_prompt(ex["prompt"], ex["location"])) > d.max_prompt_length:
            cut += 1
            continue
        out.append({"id": f"{id_prefix}{ex['id']}" if id_prefix else ex["id"],
                    "prompt": _as_turns(ex["prompt"], d.chat)})
        if len(out) == limit:
            break
    print(f"{name}: {len(out)} prompts of {path} ({cut} longer than {d.max_prompt_length} "
          "tokens left out)", flush=True)
    return out


def read_heldout(path: str, tokenizer, d) -> list[dict]:
    """The held-out prompts {"id", "prompt"} (prompts longer than max_prompt_length left out)."""
    return read_prompt_file(path, tokenizer, d, limit=d.get("eval_rows", 0), name="held-out")


# ---- models ----

def reward_config(rc):
    """The reward model's ModelConfig: `hf_path`'s config.json, or the preset (no weights)."""
    return resolve_model_config(rc)


def load_reward(rc, seed: int, mesh, pad_token_id):
    """(cfg, params on mesh): `hf_path`'s checkpoint, or a random reward model of the preset."""
    if rc.get("hf_path"):
        return load_reward_hf(rc.hf_path, mesh=mesh, **model_overrides(rc))
    cfg = reward_config(rc)
    # The backbone as a causal LM of `cfg` (its LM head dropped): a reward model of the
    # policy's preset reuses the policy's compiled init.
    backbone = jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(seed + 1))
    params = init_reward_params(cfg, jax.random.key(seed + 2), backbone=backbone)
    if cfg.pad_token_id is None:
        cfg = cfg.replace(pad_token_id=pad_token_id)
    return cfg, place_params(params, cfg, mesh, reward_logical_axes(cfg))


def with_checkpoint_stop_ids(cfg, mc):
    """The policy's stop ids from its checkpoint's generation_config.json (chat models stop at
    several: Llama-3-Instruct at <|end_of_text|> and <|eot_id|>), as HF generate does."""
    if not mc.get("hf_path"):
        return cfg
    from jaxalign.sampling.sampler import stop_ids_from_checkpoint
    ids = stop_ids_from_checkpoint(mc.hf_path)
    return cfg.replace(eos_token_id=ids if len(ids) > 1 else ids[0]) if ids else cfg


def score_step(scorer):
    """ReST's score step: the reward model's raw score of each record's prompt + completion."""
    def score(records):
        return {"reward": scorer([r["prompt"] for r in records],
                                 [r["completion"] for r in records])}
    return score


def run(config) -> dict:
    """BC and the grow/improve steps of `config.rest`; returns run_rest's result and writes
    the stage table to `<workdir>/rest_stages.json`."""
    os.makedirs(config.workdir, exist_ok=True)
    mesh = make_mesh(**config.mesh)
    tokenizer, cfg, params = load_policy(config, mesh)
    cfg = with_checkpoint_stop_ids(cfg, config.model)
    train_path, eval_path = data_paths(config)
    data = read_d(train_path, tokenizer, config.data)
    heldout = read_heldout(eval_path, tokenizer, config.data)
    rc = config.reward
    reward_tok = load_tokenizer(rc.get("tokenizer") or config.tokenizer)
    rcfg, rparams = load_reward(rc, config.seed, mesh, reward_tok.pad_token_id)
    if len(reward_tok) > rcfg.vocab_size:
        raise ValueError(f"reward tokenizer has {len(reward_tok)} tokens but the reward model's "
                         f"vocab_size is {rcfg.vocab_size}")
    scorer = RewardScorer(rcfg, rparams, reward_tok, mesh=mesh, batch_size=rc.batch_size,
                          max_length=rc.max_length, max_prompt_length=rc.max_prompt_length)
    out = run_rest(rest_settings(config.rest), policy=(cfg, params), tokenizer=tokenizer,
                   data=data, heldout=heldout, score=score_step(scorer),
                   workdir=config.workdir, config=config.to_dict(),
                   optim=config.optim.to_dict(), batch_size=config.batch_size, seed=config.seed,
                   max_len=config.data.max_length, mesh=mesh,
                   start_over=config.get("start_over", False))
    if jax.process_index() == 0:
        io.write_json(os.path.join(config.workdir, "rest_stages.json"), out["stages"])
    for st in out["stages"]:
        print(f"{st['label']:>6}  rows {st['rows']:>7}  {st['threshold']:<12} lr {st['lr']:.2e}  "
              f"held-out reward {st.get('eval/reward', float('nan')):.4f} "
              f"(step {st['selected_step']})", flush=True)
    return out


# ---- dry run ----

@dataclasses.dataclass(frozen=True)
class LoopMemory:
    """Per-device bytes of a sample-score-train loop (ReST, SPPO): the train step's, plus what
    lives beside it."""

    train: MemoryEstimate  # params, optimizer, gradients, activations of the train step
    policy_copies: int  # `copies` copies of the policy's params outside the train state
    reward_params: int  # the frozen reward (or preference) model
    kv_cache: int  # the sampler's cache: the largest batch it samples
    copies: int = POLICY_COPIES

    @property
    def total(self) -> int:
        # an upper bound: the sampler's cache never coexists with the step's activations
        return self.train.total + self.policy_copies + self.reward_params + self.kv_cache

    def table(self, device_bytes: int | None = None) -> str:
        gib = lambda b: f"{b / 2**30:8.2f} GiB"  # noqa: E731
        rows = [(k, gib(getattr(self.train, k))) for k in
                ("params", "optimizer", "gradients", "activations")]
        rows += [("policy x" + str(self.copies), gib(self.policy_copies)),
                 ("reward", gib(self.reward_params)), ("kv cache", gib(self.kv_cache)),
                 ("total", gib(self.total))]
        if device_bytes:
            rows += [("device HBM", gib(device_bytes)),
                     ("fits", "yes" if self.total < 0.9 * device_bytes else "NO")]
        return "\n".join(f"  {k:<12}{v}" for k, v in rows)


def reward_param_count(rcfg) -> int:
    return param_count(backbone_config(rcfg)) + rcfg.hidden_size  # + the score head [D, 1]


def kv_cache_bytes(cfg, rows: int, max_len: int, mesh) -> int:
    """The sampler's cache for `rows` sequences of `max_len` slots on the most loaded device
    (rows split over data x fsdp; heads not split over `model`: an upper bound)."""
    cache = jax.eval_shape(lambda: init_cache(cfg, rows, max_len))
    total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache))
    dp = mesh.shape["data"] * mesh.shape["fsdp"]
    return int(total * -(-rows // dp) / rows)


def memory_estimate(config, cfg, rcfg, optimizer, mesh) -> LoopMemory:
    s, d = rest_settings(config.rest), config.data
    held_rows = d.get("eval_rows", 0) * s.eval_samples  # all held-out prompts: one batch
    grow_rows = s.sample_batch * s.samples
    reward = (param_bytes_per_device(backbone_config(rcfg), mesh)
              + rcfg.hidden_size * np.dtype(rcfg.param_dtype).itemsize)
    return LoopMemory(
        train=estimate_training_memory(cfg, optimizer, mesh=mesh, micro_batch=config.batch_size,
                                       seq_len=d.max_length, pairs=False,
                                       reference_on_the_fly=False),
        policy_copies=POLICY_COPIES * param_bytes_per_device(cfg, mesh), reward_params=reward,
        kv_cache=kv_cache_bytes(cfg, max(grow_rows, held_rows), d.max_length, mesh))


def dry_run(config) -> dict:
    """The ReST train step built abstractly (jax.eval_shape) and the run sized on each slice of
    `config.dry_run_meshes`; allocates nothing, so an 8B config validates on a laptop."""
    from jaxalign.models.transformer import param_shapes
    from jaxalign.train.step import init_state, make_train_step

    s = rest_settings(config.rest)
    cfg, rcfg = resolve_model_config(config.model), reward_config(config.reward)
    steps = max(s.bc_steps, s.improve_train_steps)  # as run_rest builds each stage's optimizer
    optim = config.optim.to_dict()
    optimizer, _ = make_optimizer(**{**optim, "total_steps": steps, "warmup_steps": min(
        optim.get("warmup_steps", 0), steps - 1)})
    state = jax.eval_shape(lambda p: init_state(p, optimizer), param_shapes(cfg))
    B, T, sds = config.batch_size, config.data.max_length, jax.ShapeDtypeStruct
    batch = {"tokens": sds((B, T), np.int32), "mask": sds((B, T), bool),
             "loss_mask": sds((B, T), bool), "weight": sds((B,), np.float32),
             "reward": sds((B,), np.float32), "threshold": sds((B,), np.float32)}
    step = make_train_step(rest_objective(cfg), optimizer)
    new_state, metrics = jax.eval_shape(step, state, batch, jax.random.key(0))
    if jax.tree.structure(new_state) != jax.tree.structure(state):
        raise AssertionError("train step changes the state's structure")
    report = {"model": cfg, "reward_model": rcfg, "param_count": param_count(cfg),
              "reward_param_count": reward_param_count(rcfg), "metrics": sorted(metrics),
              "estimates": {}, "hbm": {}}
    print(f"policy {report['param_count']:,} parameters, reward model "
          f"{report['reward_param_count']:,}", flush=True)
    for name, m in (config.get("dry_run_meshes") or {}).items():
        m = dict(m)
        hbm = m.pop("hbm_gib", None)
        est = memory_estimate(config, cfg, rcfg, optimizer, abstract_mesh(**m))
        report["estimates"][name] = est
        report["hbm"][name] = int(hbm * 2**30) if hbm else None
        print(f"{name} {m}:\n{est.table(report['hbm'][name])}", flush=True)
    return report
