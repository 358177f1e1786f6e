"""SPPO from files (`config.algorithm = "sppo"`): a policy, a preference model and one prompt
file per iteration -> `sppo.run_sppo`.

    python -m jaxalign --config experiments/sppo_ultrafeedback.py:smoke --workdir /tmp/sppo
    python -m jaxalign --config experiments/sppo_ultrafeedback.py:gemma2_9b --dry_run

Config sections (experiments/sppo_ultrafeedback.py has complete ones):
  model       the policy: preset (random init) or hf_path; dtype overrides (runner.load_model)
  tokenizer   the policy's: "toy" or a local directory
  preference  kind "reward_model": Bradley-Terry on a scalar reward model's scores, P_ij =
              sigma(s_i - s_j), as the official code links PairRM's (hf_path: a local HF
              `*ForSequenceClassification` dir, or preset + vocab_size for a random one;
              tokenizer, max_length, max_prompt_length, batch_size, dtype overrides);
              kind "judge": an order-averaged pairwise LM judge (`reward.PairwiseJudge`:
              hf_path of a causal LM, tokenizer, template, max_length, batch_size)
  data        splits (one prompt file per iteration, {"prompt"} or {"messages"} rows; JSONL or
              Parquet), or toy=True (toy prompts under workdir/data, `toy_prompts` per
              split); split_rows (the first N usable prompts of each file; 0: all);
              max_length (the sampler's cache and the rows' length), max_prompt_length, chat,
              on_error
  sppo        `sppo.SppoSettings` fields;  optim: make_optimizer arguments
  batch_size, seed, mesh, workdir, start_over;  dry_run_meshes (the dry run's slices)

Prompt ids are "<split>:<row>", so rows of different files never share an id; a prompt text in
two splits is refused (`sppo.check_splits`). A prompt longer than max_prompt_length is left
out and counted. Writes `<workdir>/sppo_iterations.json`.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from jaxalign import io
from jaxalign.algorithms.run_rest import (LoopMemory, load_reward, read_prompt_file,
                                          reward_config, reward_param_count,
                                          rollout_kv_bytes, with_checkpoint_stop_ids)
from jaxalign.algorithms.runner import (load_model, load_policy, load_tokenizer,
                                        resolve_model_config)
from jaxalign.algorithms.sppo import PreferenceStep, check_splits, run_sppo, sppo_settings
from jaxalign.data import toy
from jaxalign.distributed import barrier
from jaxalign.models.sizing import param_bytes_per_device, param_count
from jaxalign.objectives import preference_objective
from jaxalign.reward import RewardScorer
from jaxalign.reward.model import backbone_config
from jaxalign.reward.preference import PairwiseJudge, ScorePreferenceModel
from jaxalign.sharding import make_mesh
from jaxalign.train.memory import estimate_training_memory, size_on_meshes
from jaxalign.train.optim import make_optimizer

# Copies of the policy's params outside the train state while an iteration trains: pi_t (the
# reference, kept to hand on if the phase is resumed) and the sampler's decode-layout copy.
POLICY_COPIES = 2
PREFERENCES = ("reward_model", "judge")


# ---- data ----

def split_paths(config) -> list[str]:
    """One prompt file per iteration: `data.splits`, or with `data.toy` toy files under
    workdir/data (the toy generator's prompts, a disjoint block per split)."""
    d, s = config.data, config.sppo
    if not d.get("toy"):
        paths = list(d.splits)
        if len(paths) != s.iterations or not all(paths):
            raise ValueError(f"config.data.splits: one prompt file per iteration "
                             f"(sppo.iterations={s.iterations}), got {paths}")
        return paths
    root = os.path.join(config.workdir, "data")
    rows = toy.preference_rows(d.toy_prompts * s.iterations, 0)
    prompts = list(dict.fromkeys(r["prompt"] for r in rows))  # the toy generator repeats some
    n = len(prompts) // s.iterations
    paths = []
    for t in range(s.iterations):
        path = os.path.join(root, f"prompts_{t}.jsonl")
        if not io.is_committed(path) and jax.process_index() == 0:
            io.write_jsonl(path, ({"prompt": p} for p in prompts[t * n:(t + 1) * n]))
        paths.append(path)
    barrier("jaxalign_toy_data")  # process 0's files, read by every process next
    return paths


def read_split(t: int, path: str, tokenizer, d) -> list[dict]:
    """Split t's prompts {"id": "<t>:<row>", "prompt"} (too long ones left out, counted)."""
    return read_prompt_file(path, tokenizer, d, limit=d.get("split_rows", 0),
                            name=f"split {t}", id_prefix=f"{t}:")


# ---- preference steps ----

def _texts(groups):
    return [g[0]["prompt"] for g in groups], [[r["completion"] for r in g] for g in groups]


def reward_model_preference(scorer) -> PreferenceStep:
    """Bradley-Terry on a scalar reward model: every candidate of a scoring chunk in one batched,
    sharded call (the official pipeline ranks one prompt at a time)."""
    model = ScorePreferenceModel(scorer)
    return lambda groups: model(*_texts(groups))


def judge_preference(judge: PairwiseJudge) -> PreferenceStep:
    """An order-averaged pairwise LM judge: all K (K - 1) ordered pairs of a chunk batched."""
    return lambda groups: judge(*_texts(groups))


def load_preference(config, mesh, policy_tokenizer) -> PreferenceStep:
    pc = config.preference
    tok = load_tokenizer(pc.tokenizer) if pc.get("tokenizer") else policy_tokenizer
    if pc.kind == "reward_model":
        rcfg, rparams = load_reward(pc, config.seed, mesh, tok.pad_token_id)
        if len(tok) > rcfg.vocab_size:
            raise ValueError(f"config.preference: the tokenizer has {len(tok)} tokens but the "
                             f"reward model's vocab_size is {rcfg.vocab_size}")
        return reward_model_preference(RewardScorer(
            rcfg, rparams, tok, mesh=mesh, batch_size=pc.batch_size, max_length=pc.max_length,
            max_prompt_length=pc.max_prompt_length))
    jcfg, jparams = load_model(pc, config.seed, mesh)  # "judge": a causal LM
    return judge_preference(PairwiseJudge(jcfg, jparams, tok, batch_size=pc.batch_size,
                                          max_length=pc.max_length, mesh=mesh))


def run(config) -> dict:
    """`config.sppo.iterations` SPPO iterations; writes `<workdir>/sppo_iterations.json`."""
    s = sppo_settings(config.sppo)  # every setting checked before anything loads
    if config.preference.kind not in PREFERENCES:
        raise ValueError(f"config.preference.kind: expected one of {PREFERENCES}, got "
                         f"{config.preference.kind!r}")
    io.makedirs(config.workdir)
    mesh = make_mesh(**config.mesh)
    # the prompt splits are read and checked (disjoint, one per iteration) before any weights
    splits = [read_split(t, p, load_tokenizer(config.tokenizer), config.data)
              for t, p in enumerate(split_paths(config))]
    check_splits(splits, s.iterations)
    tokenizer, cfg, params = load_policy(config, mesh)
    cfg = with_checkpoint_stop_ids(cfg, config.model)
    preference = load_preference(config, mesh, tokenizer)
    out = run_sppo(s, policy=(cfg, params), tokenizer=tokenizer, splits=splits,
                   preference=preference, workdir=config.workdir, config=config.to_dict(),
                   optim=config.optim.to_dict(), batch_size=config.batch_size, seed=config.seed,
                   max_len=config.data.max_length, mesh=mesh,
                   lean_logprobs=config.get("lean_logprobs", False),
                   start_over=config.get("start_over", False))
    if jax.process_index() == 0:
        io.write_json(os.path.join(config.workdir, "sppo_iterations.json"), out["iterations"])
    for it in out["iterations"]:
        print(f"iter{it['iteration'] + 1}: {it['rows']} rows ({it['identical']} tied prompts "
              f"left out), mean P_w {it['chosen_win_rate']:.3f} P_l "
              f"{it['rejected_win_rate']:.3f}, final loss {it.get('train/loss', float('nan')):.4g}",
              flush=True)
    return out


# ---- dry run ----

def preference_bytes(config, mesh) -> int:
    pc = config.preference
    cfg = reward_config(pc)
    if pc.kind == "reward_model":
        return (param_bytes_per_device(backbone_config(cfg), mesh)
                + cfg.hidden_size * np.dtype(cfg.param_dtype).itemsize)
    return param_bytes_per_device(cfg, mesh)


def memory_estimate(config, cfg, optimizer, mesh) -> LoopMemory:
    s, d = sppo_settings(config.sppo), config.data
    return LoopMemory(
        train=estimate_training_memory(cfg, optimizer, mesh=mesh, micro_batch=config.batch_size,
                                       seq_len=d.max_length, pairs=True,
                                       reference_on_the_fly=False,
                                       lean_logprobs=config.get("lean_logprobs", False)),
        copies=POLICY_COPIES, references=1,
        policy_copies=POLICY_COPIES * param_bytes_per_device(cfg, mesh),
        reward_params=preference_bytes(config, mesh),
        kv_cache=rollout_kv_bytes(cfg, mesh, prompts=s.sample_batch, samples=s.samples,
                                  max_len=d.max_length, max_prompt_length=d.max_prompt_length,
                                  max_new_tokens=s.max_new_tokens))


def dry_run(config) -> dict:
    """The SPPO train step built abstractly (jax.eval_shape) and the run sized on each slice of
    `config.dry_run_meshes` (named TPU slices or explicit meshes: `models.slices.sized_mesh`),
    training phase (train step, pi_t, the sampler's copy, preference model) and sampling phase
    (the policy copies, preference model, a grow batch's KV cache); allocates nothing, so a 9B
    config validates on a laptop."""
    from jaxalign.models.transformer import param_shapes
    from jaxalign.train.step import init_state, make_train_step

    s = sppo_settings(config.sppo)
    cfg, pcfg = resolve_model_config(config.model), reward_config(config.preference)
    optimizer, _ = make_optimizer(**{**config.optim.to_dict(), "total_steps": 100,
                                     "warmup_steps": 10})
    state = jax.eval_shape(lambda p: init_state(p, optimizer), param_shapes(cfg))
    B, T, sds = config.batch_size, config.data.max_length, jax.ShapeDtypeStruct
    batch = {f"{side}_{k}": sds((B, T), dt) for side in ("chosen", "rejected")
             for k, dt in (("tokens", np.int32), ("mask", bool), ("loss_mask", bool))}
    batch.update({k: sds((B,), np.float32) for k in (
        "weight", "ref_chosen_logps", "ref_rejected_logps", "chosen_win_rate",
        "rejected_win_rate", "pair_win_rate")})
    objective = preference_objective(cfg, loss=s.loss, loss_kwargs=s.loss_kwargs,
                                     lean_logprobs=config.get("lean_logprobs", False),
                                     precomputed=True)
    new_state, metrics = jax.eval_shape(make_train_step(objective, optimizer), state, batch,
                                        jax.random.key(0))
    if jax.tree.structure(new_state) != jax.tree.structure(state):
        raise AssertionError("train step changes the state's structure")
    pcount = (reward_param_count(pcfg) if config.preference.kind == "reward_model"
              else param_count(pcfg))
    report = {"model": cfg, "preference_model": pcfg, "param_count": param_count(cfg),
              "preference_param_count": pcount, "metrics": sorted(metrics)}
    print(f"policy {report['param_count']:,} parameters, preference model ({config.preference.kind}) "
          f"{pcount:,}", flush=True)

    def phases_on(mesh):
        est = memory_estimate(config, cfg, optimizer, mesh)
        return est, est.phases()

    report.update(size_on_meshes(config.get("dry_run_meshes"), phases_on,
                                 batch=(config.batch_size, 1)))
    return report
