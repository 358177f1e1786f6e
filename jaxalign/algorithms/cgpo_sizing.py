"""The CGPO runner's dry run (`python -m jaxalign --config experiments/cgpo_llama3_70b.py
--dry_run`): the train step built abstractly, every resident model counted, and the run sized
per device on each slice of `config.dry_run_meshes` for its training and sampling phase.
Nothing is allocated and no prompt file is read (`run_cgpo.task_specs(need_prompts=False)`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np

from jaxalign.algorithms.cgpo import CGPOSettings, CGPOTask
from jaxalign.algorithms.run_cgpo import TaskSpec, resident_judge_models, task_specs
from jaxalign.algorithms.run_rest import reward_config, reward_param_count, rollout_kv_bytes
from jaxalign.algorithms.runner import resolve_model_config
from jaxalign.models.sizing import param_bytes_per_device, param_count
from jaxalign.reward.model import backbone_config
from jaxalign.train.memory import PhaseMemory, estimate_training_memory, size_on_meshes
from jaxalign.train.optim import make_optimizer


def step_rows(specs: list[TaskSpec]) -> int:
    """Rows of one update before padding: every task's prompts_per_step * samples, and for
    CRRAFT one row more per prompt (a_bar, the fallback a*), as `run_cgpo` packs them."""
    rows = 0
    for sp in specs:
        t = CGPOTask(sp.name, (), score=None, **sp.settings)  # the defaults of unset fields
        rows += t.prompts_per_step * (t.samples + (t.optimizer == "crraft"))
    return rows


@dataclasses.dataclass(frozen=True)
class CGPOMemory:
    """Per-device bytes of the CGPO loop on one mesh. The Trainer holds the train state all
    run long, so both phases carry the policy's params and optimizer state; the reference's
    params, every reward model and LLM judge stay resident throughout (`models`: name ->
    bytes). Training adds gradients and activations; sampling adds the rollout KV cache."""

    params: int
    optimizer: int
    gradients: int
    activations: int
    reference: int
    models: dict  # reward models and LLM judges: name -> bytes per device
    kv_cache: int

    def phases(self) -> list[PhaseMemory]:
        other = sum(self.models.values())
        return [PhaseMemory("training", params=self.params, reference=self.reference,
                            optimizer=self.optimizer, gradients=self.gradients,
                            activations=self.activations, other_models=other),
                PhaseMemory("sampling", params=self.params, reference=self.reference,
                            optimizer=self.optimizer, kv_cache=self.kv_cache,
                            other_models=other)]

    @property
    def total(self) -> int:
        return max(p.total for p in self.phases())


def resident_models(config, specs: list[TaskSpec]) -> dict[str, tuple[str, object, int]]:
    """{label: (kind, ModelConfig, parameter count)} of every frozen model the loop keeps
    resident: the reference, each reward model a task names, each judge model."""
    ref = resolve_model_config(config.model)
    out = {"reference": ("reference", ref, _count("reference", ref))}
    for name in dict.fromkeys(sp.reward for sp in specs):
        rcfg = reward_config(config.reward_models[name])
        out[f"reward:{name}"] = ("reward model", rcfg, _count("reward model", rcfg))
    for name in resident_judge_models(specs):
        jcfg = resolve_model_config(config.judge_models[name])
        out[f"judge:{name}"] = ("LLM judge", jcfg, _count("LLM judge", jcfg))
    return out


# Cached: a model's shapes are traced once per (config, mesh), not once per model of that
# size (the 70B config's three reward models share one).
def _count(kind: str, cfg) -> int:
    return _count_of(kind == "reward model", cfg)


@functools.lru_cache(maxsize=64)
def _count_of(reward: bool, cfg) -> int:
    return reward_param_count(cfg) if reward else param_count(cfg)


@functools.lru_cache(maxsize=64)
def model_bytes(kind: str, cfg, mesh) -> int:
    """A frozen model's params per device (a reward model: backbone + score head)."""
    if kind == "reward model":
        return (param_bytes_per_device(backbone_config(cfg), mesh)
                + cfg.hidden_size * np.dtype(cfg.param_dtype).itemsize)
    return param_bytes_per_device(cfg, mesh)


def memory_estimate(config, specs, cfg, optimizer, mesh, resident=None) -> CGPOMemory:
    """CGPOMemory of the config on `mesh` (the batch padded to its data-parallel size)."""
    s, d = CGPOSettings(**config.cgpo.to_dict()), config.data
    split = mesh.shape["data"] * mesh.shape["fsdp"] * s.micro_batches
    rows = -(-step_rows(specs) // split) * split
    train = estimate_training_memory(cfg, optimizer, mesh=mesh,
                                     micro_batch=rows // s.micro_batches,
                                     seq_len=d.max_length, pairs=False,
                                     reference_on_the_fly=False)
    kv = 0
    for sp in specs:  # the sampler's batch: sample_batch prompts of one task at a time
        t = CGPOTask(sp.name, (), score=None, **sp.settings)
        kv = max(kv, rollout_kv_bytes(cfg, mesh, prompts=min(t.prompts_per_step,
                                                               s.sample_batch),
                                      samples=t.samples, max_len=d.max_length,
                                      max_prompt_length=d.max_prompt_length,
                                      max_new_tokens=s.max_new_tokens))
    resident = resident or resident_models(config, specs)
    models = {label: model_bytes(kind, mcfg, mesh)
              for label, (kind, mcfg, _) in resident.items()}
    return CGPOMemory(params=train.params, optimizer=train.optimizer,
                      gradients=train.gradients, activations=train.activations,
                      reference=models.pop("reference"), models=models, kv_cache=kv)


def dry_run(config) -> dict:
    """The CGPO train step built abstractly (jax.eval_shape; `policy_gradient_objective` with
    no clip, one row per sample and per CRRAFT baseline) and the run sized on each slice of
    `config.dry_run_meshes`, training and sampling phase (`CGPOMemory`), the resident models
    listed with their parameter counts. Reads no prompt file, allocates nothing."""
    from jaxalign.models.transformer import param_shapes
    from jaxalign.objectives import policy_gradient_objective
    from jaxalign.train.step import init_state, make_train_step

    specs = task_specs(config, need_prompts=False)
    s = CGPOSettings(**config.cgpo.to_dict())
    for sp in specs:
        row = {"id": 0, "prompt_tokens": [0], "baseline_tokens": [0]}  # settings checked only
        CGPOTask(sp.name, (row,), score=None, **sp.settings).check()
    cfg = resolve_model_config(config.model)
    optim = config.optim.to_dict()
    optimizer, _ = make_optimizer(**{**optim, "total_steps": s.steps, "warmup_steps": min(
        optim.get("warmup_steps", 0), s.steps - 1)})
    state = jax.eval_shape(lambda p: init_state(p, optimizer), param_shapes(cfg))
    B, T, sds = step_rows(specs), config.data.max_length, jax.ShapeDtypeStruct
    batch = {"tokens": sds((B, T), np.int32), "mask": sds((B, T), bool),
             "loss_mask": sds((B, T), bool), "weight": sds((B,), np.float32),
             "advantage": sds((B,), np.float32), "old_logps": sds((B,), np.float32)}
    step = make_train_step(policy_gradient_objective(cfg, clip_eps=None), optimizer)
    new_state, metrics = jax.eval_shape(step, state, batch, jax.random.key(0))
    if jax.tree.structure(new_state) != jax.tree.structure(state):
        raise AssertionError("train step changes the state's structure")
    frozen = resident_models(config, specs)
    resident = {"policy": ("policy (trained)", cfg, _count("policy", cfg)), **frozen}
    print(f"CGPO: {len(specs)} tasks, {B} rows per update (before padding), resident models:",
          flush=True)
    for label, (kind, _, n) in resident.items():
        print(f"  {label:<28}{kind:<18}{n:>18,} parameters", flush=True)
    report = {"model": cfg, "param_count": resident["policy"][2], "rows": B,
              "resident": {k: (kind, n) for k, (kind, _, n) in resident.items()},
              "metrics": sorted(metrics)}

    def phases_on(mesh):
        est = memory_estimate(config, specs, cfg, optimizer, mesh, frozen)
        return est, est.phases()

    report.update(size_on_meshes(config.get("dry_run_meshes"), phases_on))
    for name, sized in report["meshes"].items():  # each host samples its share of each task
        hosts = sized.slice.hosts if sized.slice is not None else 1
        bad = [f"{sp.name!r} ({sp.settings['prompts_per_step']})" for sp in specs
               if sp.settings.get("prompts_per_step", 1) % hosts]
        if bad:
            e = f"prompts_per_step of task(s) {', '.join(bad)} does not split over {hosts} hosts"
            report["batch_errors"].setdefault(name, e)
            print(f"  NOT RUNNABLE AS CONFIGURED on {name}: {e}", flush=True)
    if report["estimates"]:
        print(model_table(report["estimates"]), flush=True)
    return report


def model_table(estimates: dict[str, CGPOMemory]) -> str:
    """The frozen resident models (the reference and the tables' "other models"), GiB per
    device on each mesh."""
    names = list(estimates)
    first = estimates[names[0]]
    rows = [("reference", [e.reference for e in estimates.values()])]
    rows += [(label, [e.models[label] for e in estimates.values()]) for label in first.models]
    rows.append(("other models (sum)", [sum(e.models.values()) for e in estimates.values()]))
    w = max(len(r[0]) for r in rows)
    lines = ["frozen models resident in both phases, GiB per device (not counted: the reward "
             "models' and judges' forward activations, the log-prob forward of a step's rows):",
             "  " + "model".ljust(w) + "".join(f"{n:>14}" for n in names)]
    lines += ["  " + label.ljust(w) + "".join(f"{b / 2**30:>14.2f}" for b in v)
              for label, v in rows]
    return "\n".join(lines)
