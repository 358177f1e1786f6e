"""RLOO from files (`config.algorithm = "rloo"`): a policy, a scalar reward model and a prompt
file -> `online.run_online`, the online baseline of the CGPO and ReST papers (their PPO).

    python -m jaxalign --config experiments/rloo_toy.py:smoke --workdir /tmp/rloo_smoke

Config sections (experiments/rloo_toy.py has a complete one):
  model, tokenizer  the policy, as every runner (`runner.load_policy`)
  reward     the scalar reward model, as ReST's (`run_rest.load_reward`: hf_path or a preset)
  data       prompts (a prompt file), or toy=True (toy_prompts rows written under
             workdir/data); prompt_rows (the first N usable; 0: all); max_length (the
             sampler's cache and the rows' length), max_prompt_length, chat, on_error
  online     `online.OnlineSettings` fields;  optim: make_optimizer arguments
  seed, mesh, workdir
Writes `<workdir>/online.json` (the settings and the last step's rollout metrics) beside the
trainer's checkpoints and metrics.jsonl (`rollout/` rows per step).
"""

from __future__ import annotations

import os

import jax

from jaxalign import io
from jaxalign.algorithms.online import online_settings, run_online
from jaxalign.algorithms.run_rest import (load_reward, read_prompt_file, score_step,
                                          with_checkpoint_stop_ids)
from jaxalign.algorithms.runner import load_policy, load_tokenizer
from jaxalign.data import Encoder, toy
from jaxalign.distributed import barrier
from jaxalign.reward import RewardScorer
from jaxalign.sharding import make_mesh


def prompt_path(config) -> str:
    """`data.prompts`, or with `data.toy` the toy prompts written under workdir/data."""
    d = config.data
    if not d.get("toy"):
        if not d.get("prompts"):
            raise ValueError("config.data.prompts is not set: give a prompt file (.jsonl, "
                             ".json or .parquet of {\"prompt\"} rows), or data.toy=True")
        return d.prompts
    path = os.path.join(config.workdir, "data", "prompts.jsonl")
    if not io.is_committed(path) and jax.process_index() == 0:
        io.write_jsonl(path, ({"prompt": r["prompt"]}
                              for r in toy.preference_rows(d.toy_prompts, 0)))
    barrier("jaxalign_toy_data")
    return path


def run(config) -> dict:
    """RLOO for `config.online.steps` steps (resuming from the workdir's checkpoint); returns
    run_online's result."""
    io.makedirs(config.workdir)
    mesh = make_mesh(**config.mesh)
    tokenizer, cfg, params = load_policy(config, mesh)
    cfg = with_checkpoint_stop_ids(cfg, config.model)
    d = config.data
    enc = Encoder(tokenizer, chat=d.chat)
    prompts = [{**p, "prompt_tokens": enc.encode_prompt(p["prompt"], str(p["id"]))}
               for p in read_prompt_file(prompt_path(config), tokenizer, d,
                                         limit=d.get("prompt_rows", 0))]
    if not prompts:
        raise ValueError(f"{prompt_path(config)}: no usable prompt")
    rc = config.reward
    reward_tok = load_tokenizer(rc.get("tokenizer") or config.tokenizer)
    rcfg, rparams = load_reward(rc, config.seed, mesh, reward_tok.pad_token_id)
    scorer = RewardScorer(rcfg, rparams, reward_tok, mesh=mesh, batch_size=rc.batch_size,
                          max_length=rc.max_length, max_prompt_length=rc.max_prompt_length)
    s = online_settings(config.online)
    out = run_online(s, policy=(cfg, params), tokenizer=tokenizer, prompts=prompts,
                     score=score_step(scorer), workdir=config.workdir,
                     optim=config.optim.to_dict(), seed=config.seed, max_len=d.max_length,
                     mesh=mesh)
    if jax.process_index() == 0:
        io.write_json(os.path.join(config.workdir, "online.json"),
                      {"settings": config.online.to_dict(),
                       "last": out["history"][-1] if out["history"] else None})
    last = out["history"][-1] if out["history"] else {}
    print(f"RLOO: {s.steps} steps; last step reward {last.get('reward', float('nan')):.4f}, "
          f"KL {last.get('kl', float('nan')):.4f}", flush=True)
    return out
