"""A tiny RLOO run for the online-loop tests: `python -m tests.algorithms.online_tiny WORKDIR`.

The 2-layer random Llama of rest_tiny on the toy word language; the reward counts positive
minus negative words (a deterministic reward on token ids). With KILL=k in the environment the
process SIGKILLs itself after step k. At the end it writes WORKDIR/final.npz (the params).
"""

import os
import signal
import sys

if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np

from jaxalign.algorithms.online import OnlineSettings, run_online
from jaxalign.models import init_params
from tests.algorithms import rest_tiny
from tests.algorithms.rest_tiny import CFG

SETTINGS = OnlineSettings(steps=5, prompts_per_step=4, samples=2, max_new_tokens=6,
                          kl_coef=0.05, clip_eps=0.2, passes=2, checkpoint_every=2,
                          sample_batch=4)
OPTIM = dict(optimizer="adamw", lr=1e-2, warmup_steps=0, decay="constant", grad_clip=1.0)
MAX_LEN = 24


def setup():
    """(tokenizer, prompts, score): rest_tiny's toy prompts (their ids and prompt tokens) and
    its positive-minus-negative-words reward."""
    tok, data, _, score = rest_tiny.setup()
    return tok, [{"id": r["id"], "prompt_tokens": r["prompt_tokens"]} for r in data[:12]], score


def run(workdir, *, settings=SETTINGS, on_step=None, **kw):
    tok, prompts, score = setup()
    params = init_params(CFG, jax.random.key(0))
    return run_online(settings, policy=(CFG, params), tokenizer=tok, prompts=prompts,
                      score=score, workdir=workdir, optim=OPTIM, seed=0, max_len=MAX_LEN,
                      on_step=on_step, **kw)


def flat(params) -> dict:
    return {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}


if __name__ == "__main__":
    jax.config.update("jax_default_matmul_precision", "highest")
    workdir, kill = sys.argv[1], int(os.environ.get("KILL", "0"))

    def on_step(step):
        if step == kill:
            os.kill(os.getpid(), signal.SIGKILL)

    out = run(workdir, on_step=on_step)
    np.savez(os.path.join(workdir, "final.npz"), **flat(out["params"]))
