"""A tiny ReST run for the driver tests: `python -m tests.algorithms.rest_tiny WORKDIR`.

A 2-layer random Llama on the toy word language; D is 16 toy prompts with their "chosen"
completions; the score step counts positive minus negative words (a deterministic reward on
token ids). BC, then G=1 grow step of I=1 (two improve steps), so every phase runs. With KILL=event:k in the
environment the process SIGKILLs itself at the k-th driver event of that name (grow:shard,
score:chunk, build, train:step, iteration, phase:<name>). At the end it writes
WORKDIR/final.npz (the policy's params) and WORKDIR/events.json (the events it saw).
"""

import json
import os
import signal
import sys

if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np

from jaxalign.algorithms.rest import rest_settings, run_rest
from jaxalign.data import Encoder, toy
from jaxalign.models import ModelConfig, init_params

CFG = ModelConfig(family="llama", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                  num_kv_heads=2, intermediate_size=64, initializer_range=0.1,
                  max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)
SETTINGS = dict(grow_steps=1, improve_steps=1, samples=2, temperature=1.0, max_new_tokens=8,
                normalize="percentile", bc_steps=4, improve_train_steps=4, eval_every=2,
                eval_samples=1, shard_size=4, score_chunk=4, sample_batch=4)
OPTIM = dict(optimizer="adamw", lr=3e-3, warmup_steps=1, decay="constant", grad_clip=1.0)


def setup():
    tok = toy.word_tokenizer()
    enc = Encoder(tok)
    data = []
    for i, r in enumerate(toy.preference_rows(16, seed=0)):
        p, c = enc.encode(r["prompt"], r["chosen"])
        data.append({"id": i, "prompt": r["prompt"], "prompt_tokens": p, "tokens": c})
    heldout = [{"id": f"h{i}", "prompt": r["prompt"]}
               for i, r in enumerate(toy.preference_rows(6, seed=1))]
    pos = np.array([tok.convert_tokens_to_ids(w) for w in toy.POSITIVE])
    neg = np.array([tok.convert_tokens_to_ids(w) for w in toy.NEGATIVE])

    def score(records):
        t = [np.asarray(r["tokens"]) for r in records]
        return {"reward": np.array([np.isin(x, pos).sum() - np.isin(x, neg).sum() for x in t],
                                   np.float32)}

    return tok, data, heldout, score


def run(workdir, *, on_event=None, settings=SETTINGS, start_over=False, **override):
    tok, data, heldout, score = setup()
    data, heldout = override.get("data", data), override.get("heldout", heldout)
    params = init_params(CFG, jax.random.key(0))
    config = {"settings": settings, "optim": OPTIM}
    return run_rest(rest_settings(settings), policy=(CFG, params), tokenizer=tok, data=data,
                    heldout=heldout, score=score, workdir=workdir, config=config,
                    optim=OPTIM, batch_size=8, seed=0, max_len=32, start_over=start_over,
                    on_event=on_event)


if __name__ == "__main__":
    jax.config.update("jax_default_matmul_precision", "highest")
    workdir = sys.argv[1]
    kill = os.environ.get("KILL")
    seen: dict[str, int] = {}

    def on_event(name):
        seen[name] = seen.get(name, 0) + 1
        if kill and kill == f"{name}:{seen[name]}":
            os.kill(os.getpid(), signal.SIGKILL)

    out = run(workdir, on_event=on_event)
    flat = {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_flatten_with_path(out["policy"])[0]}
    np.savez(os.path.join(workdir, "final.npz"), **flat)
    with open(os.path.join(workdir, "events.json"), "w") as fh:
        json.dump(seen, fh)
