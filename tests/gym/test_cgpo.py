"""CGPO on the gym (`jaxalign.gym.cgpo`), smoke-sized: on two tasks sharing hackable proxy
reward models (chat: a sentiment proxy; help: a helpfulness proxy), unconstrained RLOO's
violation rate rises over the run, and CRPG's stays below RLOO's at the end."""

import numpy as np

from experiments import cgpo_gym
from jaxalign.algorithms.cgpo import CGPOSettings, run_cgpo
from jaxalign.gym import cgpo
from jaxalign.sharding import make_mesh

STEPS = 10
MARGIN = 0.15  # RLOO: mean violation of the last 3 steps minus the first 3, on each task


def test_rloo_hacks_the_proxy_and_crpg_stays_within_the_judges(ref, tmp_path):
    import jax
    config = cgpo_gym.get_config("smoke")
    config.tasks.chat.num_prompts = config.tasks.help.num_prompts = 32
    config.num_test = 4
    setup = cgpo.build(ref, config, 0, str(tmp_path))
    s = CGPOSettings(**{**config.cgpo.to_dict(), "steps": STEPS, "checkpoint_every": STEPS})
    mesh = make_mesh(devices=jax.devices()[:1])
    hist = {}
    for method in ("rloo", "crpg"):
        tasks = cgpo.make_tasks(setup, config, method)
        out = run_cgpo(s, tasks, policy=(ref.model_cfg, ref.params), tokenizer=ref.tokenizer,
                       workdir=str(tmp_path / method), optim=config.optim.to_dict(), seed=0,
                       max_len=config.max_len, mesh=mesh)
        hist[method] = out["history"]
        assert [t.optimizer for t in tasks] == [method] * 2
    v = {m: {n: np.array([h[f"{n}/violation"] for h in hist[m]]) for n in ("chat", "help")}
         for m in hist}
    report = {m: {n: np.round(x, 2).tolist() for n, x in v[m].items()} for m in v}
    print(f"violation rate per step: {report}")
    for n in ("chat", "help"):
        rise = v["rloo"][n][-3:].mean() - v["rloo"][n][:3].mean()
        assert rise >= MARGIN, (n, report)
        assert v["crpg"][n][-3:].mean() < v["rloo"][n][-3:].mean(), (n, report)
