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
import functools
import os

import jax
import numpy as np

from jaxalign import io
from jaxalign.algorithms.rest import rest_settings, run_rest
from jaxalign.algorithms.runner import (load_policy, load_split, load_tokenizer, model_overrides,
                                        resolve_model_config)
from jaxalign.data import Encoder, read_examples, toy
from jaxalign.data.batching import bucket_lengths, pick_bucket
from jaxalign.distributed import barrier
from jaxalign.models import init_params
from jaxalign.models.sizing import kv_cache_bytes, param_bytes_per_device, param_count
from jaxalign.objectives import rest_objective
from jaxalign.reward import RewardScorer, init_reward_params, load_reward_hf, reward_logical_axes
from jaxalign.reward.model import backbone_config
from jaxalign.sharding import make_mesh
from jaxalign.train.memory import (MemoryEstimate, PhaseMemory, estimate_training_memory,
                                   phase_table, size_on_meshes)
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
    barrier("jaxalign_toy_data")  # process 0's files, read by every process next
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
    io.makedirs(config.workdir)
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
    """Per-device bytes of a sample-score-train loop (ReST, SPPO), phase by phase.

    training: the train step, the policy copies kept beside it, the reward model, and the cache
      of any sampling done while the train state lives (ReST's held-out evaluation; counted
      beside the step's activations, an upper bound: they never coexist);
    sampling: the grow step, with no train state: the policy copies (the sampler holds the
      params in their own dtype), the reward model and the rollout batch's cache.
    `total` is the larger of the two.
    """

    train: MemoryEstimate  # params, optimizer, gradients, activations of the train step
    policy_copies: int  # `copies` copies of the policy's params outside the train state
    reward_params: int  # the frozen reward (or preference) model
    kv_cache: int  # the sampler's cache of one grow batch
    copies: int = POLICY_COPIES
    references: int = 0  # of the copies, those that are the loss's frozen reference (SPPO's pi_t)
    train_kv_cache: int = 0  # sampling while the train state lives (ReST's held-out evaluation)

    def phases(self) -> list[PhaseMemory]:
        reference = self.policy_copies // self.copies * self.references
        return [self.train.phase("training", params=self.policy_copies - reference,
                                 reference=reference, kv_cache=self.train_kv_cache,
                                 other_models=self.reward_params),
                PhaseMemory("sampling", params=self.policy_copies, kv_cache=self.kv_cache,
                            other_models=self.reward_params)]

    @property
    def total(self) -> int:
        return max(p.total for p in self.phases())

    def table(self, device_bytes: int | None = None) -> str:
        return phase_table(self.phases(), device_bytes)


def reward_param_count(rcfg) -> int:
    return param_count(backbone_config(rcfg)) + rcfg.hidden_size  # + the score head [D, 1]


def rollout_kv_bytes(cfg, mesh, *, prompts: int, samples: int, max_len: int,
                     max_prompt_length: int, max_new_tokens: int) -> int:
    """The sampler's KV cache for one batch of `prompts` prompts x `samples` samples on the
    most loaded device, laid out as `Sampler` does: prompt rows rounded up to a multiple of the
    data-parallel size (data x fsdp) and split over it, each repeated `samples` times after the
    prefill (sampling/prompts.py `make_batches`); P + N - 1 slots, P the prompt-length bucket
    of max_prompt_length and N = min(max_new_tokens, max_len - 1) (sampling/loop.py
    `_prefill`). KV heads are not split over `model`: an upper bound. One batch's caches are
    all there is at a time: the sampler drops a batch's caches as soon as its decode is
    dispatched (`Sampler._run`), so they are freed before the next batch's prefill runs."""
    dp = mesh.shape["data"] * mesh.shape["fsdp"]
    P = pick_bucket(min(max_prompt_length, max_len - 1), bucket_lengths(max_len - 1,
                                                                        min_length=16))
    slots = P + min(max_new_tokens, max_len - 1) - 1
    return kv_cache_bytes(cfg, -(-prompts // dp) * samples, slots)


def memory_estimate(config, cfg, rcfg, optimizer, mesh) -> LoopMemory:
    s, d = rest_settings(config.rest), config.data
    kv = functools.partial(rollout_kv_bytes, cfg, mesh, max_len=d.max_length,
                           max_prompt_length=d.max_prompt_length,
                           max_new_tokens=s.max_new_tokens)
    held = d.get("eval_rows", 0) or s.sample_batch  # held-out prompts, sampled in batches
    reward = (param_bytes_per_device(backbone_config(rcfg), mesh)
              + rcfg.hidden_size * np.dtype(rcfg.param_dtype).itemsize)
    return LoopMemory(
        train=estimate_training_memory(cfg, optimizer, mesh=mesh, micro_batch=config.batch_size,
                                       seq_len=d.max_length, pairs=False,
                                       reference_on_the_fly=False),
        policy_copies=POLICY_COPIES * param_bytes_per_device(cfg, mesh), reward_params=reward,
        kv_cache=kv(prompts=s.sample_batch, samples=s.samples),
        train_kv_cache=kv(prompts=min(held, s.sample_batch), samples=s.eval_samples)
        if s.eval_every else 0)


def dry_run(config) -> dict:
    """The ReST train step built abstractly (jax.eval_shape) and the run sized on each slice of
    `config.dry_run_meshes` (named TPU slices or explicit meshes: `models.slices.sized_mesh`),
    training and sampling phase (`LoopMemory`); allocates nothing, so an 8B config validates
    on a laptop."""
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
              "reward_param_count": reward_param_count(rcfg), "metrics": sorted(metrics)}
    print(f"policy {report['param_count']:,} parameters, reward model "
          f"{report['reward_param_count']:,}", flush=True)

    def phases_on(mesh):
        est = memory_estimate(config, cfg, rcfg, optimizer, mesh)
        return est, est.phases()

    report.update(size_on_meshes(config.get("dry_run_meshes"), phases_on))
    return report
