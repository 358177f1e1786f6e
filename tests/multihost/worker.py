"""One process of a multi-process test run: `python -m tests.multihost.worker MODE WORKDIR
PROCESS_ID NUM_PROCESSES PORT [ACTION]` (tests/multihost/test_multiprocess.py starts them).

Each process gets 8 / NUM_PROCESSES fake CPU devices, so every run has the 8 devices of the
single-process tests (the same mesh).

dpo: `python -m jaxalign` itself (`jaxalign.main.cli`) on the DPO toy config below, with
  `--coordinator_address localhost:PORT --num_processes N --process_id I`. ACTION "sigterm@S":
  process 1 sends itself SIGTERM after step S (both processes should save and exit 75);
  "kill@S": every process SIGKILLs itself after step S; none: run to the end. At the end
  process 0 writes WORKDIR/final.npz (the policy's params).
rloo, cgpo, reward_bt: `python -m jaxalign` on the config in CONFIGS, process 0 writing
  WORKDIR/final.npz at the end (reward_bt also exports a HF checkpoint to WORKDIR/hf_export).
ckpt: a Checkpointer (with a best manager) on a tiny state; both processes save step 1 to
  "best", then to "last" (async), and wait. Process 1's background threads reach Orbax's
  write-complete barriers 3 s late, so process 0's two saves wait at theirs together (as a
  loaded machine can make them at a run's final step). Prints "saved" at the end.
grow: the grow step (`jaxalign.algorithms.grow.grow`) of a tiny random Llama on GROW_PROMPTS
  into WORKDIR/grow, jax.distributed set up by `jaxalign.distributed.initialize`.
"""

import functools
import os
import sys

if __name__ == "__main__":
    _mode, _workdir, _pid, _nproc, _port = sys.argv[1:6]
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    os.environ["XLA_FLAGS"] = " ".join(
        flags + [f"--xla_force_host_platform_device_count={8 // int(_nproc)}"])
    os.environ["JAX_PLATFORMS"] = "cpu"

import numpy as np  # noqa: E402

STEPS, KILL_AT = 8, 6
DPO_OVERRIDES = (
    "--config.data.toy_train=64", "--config.data.toy_eval=16",
    f"--config.loop.total_steps={STEPS}", f"--config.optim.total_steps={STEPS}",
    "--config.optim.warmup_steps=1",
    "--config.loop.checkpoint_every=3", "--config.loop.eval_every=0", "--config.loop.log_every=1",
    "--config.loop.progress_bar=False", "--config.reference=precomputed")
DPO_CONFIG = "experiments/dpo_toy.py:smoke"
CONFIGS = {"dpo": (DPO_CONFIG, DPO_OVERRIDES),
           "rloo": ("experiments/rloo_toy.py:smoke", ("--config.online.steps=2",)),
           "cgpo": ("experiments/cgpo_toy.py:smoke", ()),
           "reward_bt": ("experiments/reward_toy.py:smoke", (
               "--config.export_hf=True", "--config.loop.total_steps=4",
               "--config.optim.total_steps=4", "--config.optim.warmup_steps=1",
               "--config.loop.checkpoint_every=4"))}
GROW_PROMPTS = [f"prompt {i} is" + " very" * (i % 4) for i in range(10)]  # shards of 5: 3 + 2
GROW_SETTINGS = dict(n=2, seed=3, shard_size=5, batch_size=4, max_new_tokens=6,
                     temperature=1.0)


def mode_config(workdir: str, mode: str = "dpo"):
    """The config a mode runs, as `python -m jaxalign` builds it from its overrides (for the
    single-process run of the test)."""
    import importlib.util
    path, overrides = CONFIGS[mode]
    spec = importlib.util.spec_from_file_location("config", path.split(":")[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(path.split(":")[1])
    for o in overrides:
        key, value = o.removeprefix("--config.").split("=")
        *path, leaf = key.split(".")
        section = functools.reduce(lambda c, k: c[k], path, config)
        old = section[leaf]
        section[leaf] = value == "True" if isinstance(old, bool) else type(old)(value)
    config.workdir = workdir
    return config


def flat_params(params) -> dict:
    """{path: numpy array} of a params tree (replicated or this process's addressable copy)."""
    import jax
    from jaxalign.checksum import leaf_path
    return {leaf_path(p): np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x)
            for p, x in jax.tree_util.tree_leaves_with_path(params)}


def tiny_sampler():
    """A tiny random Llama's sampler on all 8 devices (the same weights in every process)."""
    import jax
    from jaxalign.data import toy
    from jaxalign.models import init_params
    from jaxalign.sampling import Sampler
    from jaxalign.sharding import make_mesh
    from tests.algorithms.rest_tiny import CFG
    params = jax.device_get(jax.jit(init_params, static_argnums=0)(CFG, jax.random.key(0)))
    return Sampler(CFG, params, toy.word_tokenizer(), mesh=make_mesh(data=-1), max_len=24,
                   batch_size=GROW_SETTINGS["batch_size"])


def toy_score(records):
    """A score step that depends on each record (and counts its calls: a collective score step
    must be called as often on every process)."""
    toy_score.calls += 1
    return {"reward": [sum(r["tokens"]) % 7 + 0.25 * r["sample"] for r in records],
            "length": [len(r["tokens"]) for r in records]}


def run_grow(workdir: str):
    """The grow step into WORKDIR/grow, then the driver's score phase of its records (3 prompts
    per chunk: 2 + 1 of a chunk per process, then 1 + a filler) into WORKDIR/scored."""
    from jaxalign.algorithms.driver import score_phase
    from jaxalign.algorithms.grow import grow, read_shards
    settings = {k: v for k, v in GROW_SETTINGS.items() if k != "batch_size"}
    paths = grow(GROW_PROMPTS, tiny_sampler(), out_dir=os.path.join(workdir, "grow"),
                 batch_size=GROW_SETTINGS["batch_size"], progress=False, **settings)
    toy_score.calls = 0
    summary = score_phase(os.path.join(workdir, "scored"), read_shards(paths), toy_score,
                          chunk_prompts=3)
    return paths, summary, toy_score.calls


toy_score.calls = 0


def main(mode, workdir, pid, nproc, port, action=""):
    import signal

    import jax
    jax.config.update("jax_default_matmul_precision", "highest")  # as tests/conftest.py
    address, pid, nproc = f"localhost:{port}", int(pid), int(nproc)
    if mode == "ckpt":
        import time

        from jaxalign import distributed
        from jaxalign.train.checkpoint import Checkpointer
        from jaxalign.sharding import make_mesh
        from tests.algorithms.rest_tiny import CFG
        distributed.initialize(address, nproc, pid, heartbeat_timeout_s=30)
        mesh = make_mesh(data=-1)
        state = {"w": jax.device_put(np.arange(16, dtype=np.float32),
                                     jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))}
        if pid == 1:  # late at every write-complete barrier (Orbax's background threads)
            from orbax.checkpoint._src.multihost import multihost as orbax_multihost
            real = orbax_multihost.get_barrier_sync_fn

            def late(**kwargs):
                sync = real(**kwargs)

                def wait(*, key, timeout_ms):
                    if "async_write_complete" in key:
                        time.sleep(3)
                    return sync(key=key, timeout_ms=timeout_ms)
                return wait
            orbax_multihost.get_barrier_sync_fn = late
        ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), CFG, best_metric="acc")
        ckpt.save_best(1, state, {"acc": 0.5})
        ckpt.save(1, state)
        ckpt.wait()
        ckpt.close()
        print("saved", flush=True)
        return
    if mode == "grow":
        from jaxalign import distributed
        distributed.initialize(address, nproc, pid, heartbeat_timeout_s=30)
        print(f"score calls: {run_grow(workdir)[2]}", flush=True)
        return
    from jaxalign import main as entry
    from jaxalign.train import trainer

    kind, _, at = action.partition("@")
    run_loop = trainer.run_loop

    def on_step_run_loop(t, it, on_step=None):
        def hook(step):
            if step == int(at or -1) and kind == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if step == int(at or -1) and kind == "sigterm" and pid == 1:
                os.kill(os.getpid(), signal.SIGTERM)  # JAX's preemption service hears it
        return run_loop(t, it, hook)

    trainer.run_loop = on_step_run_loop

    runner = entry.RUNNERS[mode]

    def run_and_save(config):
        out = runner.run(config)
        params = {"dpo": lambda: out[1].params, "reward_bt": lambda: out["state"].params}.get(
            mode, lambda: out["params"])()
        if jax.process_index() == 0:
            np.savez(os.path.join(workdir, "final.npz"), **flat_params(params))
        return out

    entry.RUNNERS[mode] = runner._replace(run=run_and_save)
    path, overrides = CONFIGS[mode]
    sys.argv = ["jaxalign", f"--config={path}", f"--workdir={workdir}", *overrides,
                f"--coordinator_address={address}", f"--num_processes={nproc}",
                f"--process_id={pid}", "--heartbeat_timeout_s=30"]
    entry.cli()


if __name__ == "__main__":
    main(*sys.argv[1:])
