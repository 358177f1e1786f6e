"""LoRA adapters: merge, target matching, gradients, training, export, the DPO runner."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

from experiments import dpo_mistral_ultrafeedback, dpo_toy
from jaxalign.algorithms import run_dpo
from jaxalign.models import Transformer, init_params, positions_from_mask
from jaxalign.models.hf import load_hf, save_hf
from jaxalign.objectives import preference_objective
from jaxalign.sharding import make_mesh
from jaxalign.train.lora import (LoraConfig, init_lora, lora_logical_axes, lora_objective,
                                 merge, param_count)
from jaxalign.train.metrics import read_jsonl
from jaxalign.train.optim import make_optimizer
from jaxalign.train.trainer import LoopConfig, train
from tests.train.batches import TINY, preference_batch
from tests.train.run_tiny import SyntheticIterator


@pytest.fixture(scope="module")
def params():
    return jax.jit(init_params, static_argnums=0)(TINY, jax.random.key(0))


def _flat(tree):
    return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


# Jitted once here: eager calls would compile every primitive of every kernel shape.
_init = jax.jit(init_lora, static_argnums=1)
_merge = jax.jit(merge, static_argnums=2)


def _random_b(adapters, seed=1):
    """Adapters with b drawn at random (at init b = 0 and the update vanishes)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.asarray(rng.normal(size=x.shape), x.dtype) if p[-1].key == "b" else x,
        adapters)


def _loss(objective, batch):
    def f(p):
        loss_B, w_B, _ = objective(p, batch, jax.random.key(0))
        return jnp.sum(w_B * loss_B) / jnp.sum(w_B)
    return f


def test_merge_is_w_plus_scaled_a_b_and_only_touches_targets(params):
    lcfg = LoraConfig(rank=4, alpha=12.0, targets=("q", "mlp/down", "lm_head"))
    adapters = _random_b(_init(params, lcfg, jax.random.key(3)))
    merged = merge(params, adapters, lcfg)
    for path in (("layers", "attn", "q"), ("layers", "mlp", "down"), ("lm_head",)):
        w = np.asarray(_get(params, path)["kernel"], np.float64)
        a, b = (np.asarray(_get(adapters, path)[k], np.float64) for k in "ab")
        want = w + 3.0 * np.matmul(a, b)  # alpha / r = 12 / 4; per layer when stacked
        np.testing.assert_allclose(_get(merged, path)["kernel"], want, rtol=1e-6, atol=1e-6)
    q = adapters["layers"]["attn"]["q"]
    assert q["a"].shape == (2, 32, 4) and q["b"].shape == (2, 4, 32)  # [L, D, r], [L, r, N*H]
    changed = {k for k, v in _flat(merged).items() if not np.array_equal(v, _flat(params)[k])}
    assert changed == {"['layers']['attn']['q']['kernel']", "['layers']['mlp']['down']['kernel']",
                       "['lm_head']['kernel']"}
    jitted = _merge(params, adapters, lcfg)
    for x, y in zip(jax.tree.leaves(jitted), jax.tree.leaves(merged)):  # XLA may fold the
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)  # scale into the product


def test_init_adapters_merge_to_the_base_in_its_dtype(params):
    lcfg = LoraConfig()
    adapters = _init(params, lcfg, jax.random.key(1))
    assert set(adapters["layers"]["attn"]) == {"q", "k", "v"} and set(adapters) == {"layers"}
    for x, y in zip(jax.tree.leaves(_merge(params, adapters, lcfg)), jax.tree.leaves(params)):
        np.testing.assert_array_equal(x, y)
    a = np.asarray(adapters["layers"]["attn"]["k"]["a"])  # PEFT: U(-1/sqrt(in), 1/sqrt(in))
    assert np.abs(a).max() <= 1 / np.sqrt(32) and a.std() > 0.5 / np.sqrt(3 * 32)
    assert not np.array_equal(a[0], a[1])  # each stacked layer its own adapter
    # k: 2 layers x (32 x 8 + 8 x 16); q and v: 2 x (32 x 8 + 8 x 32), 2 x (32 x 8 + 8 x 16).
    assert param_count(adapters) == 2 * (512 + 384 + 384)
    p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    ad16 = _init(p16, lcfg, jax.random.key(1))
    assert {x.dtype for x in jax.tree.leaves(ad16)} == {jnp.dtype(jnp.bfloat16)}
    merged16 = _merge(p16, _random_b(ad16), lcfg)
    assert merged16["layers"]["attn"]["q"]["kernel"].dtype == jnp.bfloat16


def _shapes(params, lcfg):
    """The adapters init_lora would make, as shapes (target matching only, nothing compiled)."""
    return jax.eval_shape(lambda k: init_lora(params, lcfg, k), jax.random.key(0))


def test_targets_by_name_or_path_suffix(params):
    def adapted(*targets):
        ad = _shapes(params, LoraConfig(targets=targets))
        return {"/".join(p.key for p in path[:-1])
                for path, _ in jax.tree_util.tree_flatten_with_path(ad)[0]}
    assert adapted("q") == adapted("attn/q") == adapted("layers/attn/q") == {"layers/attn/q"}
    assert adapted("down", "up") == {"layers/mlp/down", "layers/mlp/up"}
    assert adapted("q,v") == {"layers/attn/q", "layers/attn/v"}  # a command-line override
    axes = lora_logical_axes(TINY, _shapes(params, LoraConfig(targets=("v", "o"))))
    assert axes["layers"]["attn"]["v"] == {"a": ("layers", "embed", None),
                                           "b": ("layers", None, "kv")}
    assert axes["layers"]["attn"]["o"] == {"a": ("layers", "heads", None),
                                           "b": ("layers", None, "embed")}


def test_bad_config_and_bad_adapters_are_clear_errors(params):
    with pytest.raises(ValueError, match=r"'qq' matches no kernel.*layers/attn/q.*lm_head"):
        _shapes(params, LoraConfig(targets=("q", "qq")))
    with pytest.raises(ValueError, match="'embed' matches no kernel"):  # an embedding, no kernel
        lora_objective(lambda *a: a, params, LoraConfig(targets=("embed",)))
    for rank in (0, -2, 1.5):
        with pytest.raises(ValueError, match="rank must be an integer >= 1"):
            LoraConfig(rank=rank)
    with pytest.raises(ValueError, match="alpha"):
        LoraConfig(alpha=0.0)
    with pytest.raises(ValueError, match="targets is empty"):
        LoraConfig(targets=())
    adapters = _shapes(params, LoraConfig(rank=4))
    with pytest.raises(ValueError, match=r"layers/attn/k has a\[2, 32, 4\].*rank 8"):
        merge(params, adapters, LoraConfig(rank=8))


def test_gradients_reach_adapters_only(params):
    lcfg = LoraConfig(rank=4, targets=("q", "v", "up"))
    batch = preference_batch(0)
    policy = jax.tree.map(lambda x: x + 0.05 * jnp.sign(x), params)  # policy != reference
    objective = preference_objective(TINY, loss="dpo.sigmoid", loss_kwargs={"beta": 0.5},
                                     ref_params=policy)
    adapters = _init(params, lcfg, jax.random.key(2))
    loss_and_grad = jax.jit(jax.value_and_grad(_loss(lora_objective(objective, params, lcfg),
                                                     batch)))
    loss0, g0 = loss_and_grad(adapters)
    for m in jax.tree.leaves(g0, is_leaf=lambda n: isinstance(n, dict) and "a" in n):
        assert not np.any(m["a"])  # b = 0: dL/da = scale dL/dW b^T = 0
        assert np.abs(m["b"]).max() > 0
    stepped = jax.tree.map(lambda x, g: x - 1.0 * g, adapters, g0)  # one SGD step
    loss1, g1 = loss_and_grad(stepped)
    for m in jax.tree.leaves(g1, is_leaf=lambda n: isinstance(n, dict) and "a" in n):
        assert np.abs(m["a"]).max() > 0 and np.abs(m["b"]).max() > 0
    assert loss1 < loss0
    # The base is frozen by construction: no gradient flows to it even when it is traced.
    g_base = jax.jit(jax.grad(
        lambda base: _loss(lora_objective(objective, base, lcfg), batch)(stepped)))(params)
    assert all(not np.any(g) for g in jax.tree.leaves(g_base))
    # The merge's own derivatives against finite differences.
    q_kernel = lambda ad: merge(params, ad, lcfg)["layers"]["attn"]["q"]["kernel"]  # noqa: E731
    check_grads(jax.jit(lambda ad: jnp.sum(jnp.sin(q_kernel(ad)))), (stepped,), order=1,
                modes=("rev",))


@jax.jit
def _logits(p, tokens):
    mask = jnp.ones(tokens.shape, bool)
    return Transformer(TINY).apply({"params": p}, tokens, positions_from_mask(mask), mask)[0]


def test_training_adapters_lowers_the_loss_and_exports_merged(params, tmp_path):
    lcfg = LoraConfig(rank=4, alpha=8.0, targets=("q", "k", "v"))
    objective = preference_objective(TINY, loss="genarm.arm", loss_kwargs={"beta": 0.5})
    adapters = _init(params, lcfg, jax.random.key(1))
    opt, _ = make_optimizer(optimizer="adamw", lr=1e-2, warmup_steps=2)
    loop = LoopConfig(workdir=str(tmp_path), total_steps=24, checkpoint_every=24, log_every=1,
                      progress_bar=False, async_checkpoints=False)
    state = train(loop, objective=lora_objective(objective, params, lcfg), optimizer=opt,
                  params=adapters, model_cfg=TINY, train_iter=SyntheticIterator(),
                  eval_batches=[preference_batch(999)], mesh=make_mesh(data=4, fsdp=2),
                  logical_axes=lora_logical_axes(TINY, adapters))
    evals = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "eval/loss" in r]
    print(f"eval loss {evals[0]['eval/loss']:.4f} -> {evals[-1]['eval/loss']:.4f}")
    assert evals[-1]["eval/loss"] < evals[0]["eval/loss"] - 0.1
    assert jax.tree.structure(state.params) == jax.tree.structure(adapters)
    q = state.params["layers"]["attn"]["q"]  # a [L, D, r]: D ("embed") over fsdp
    assert q["a"].sharding.spec == P(None, "fsdp", None) and q["b"].sharding.spec == P()
    # The checkpoint on disk holds the adapters (and their optimizer state), not the model.
    saved = ocp.StandardCheckpointer().metadata(
        os.path.join(tmp_path, "checkpoints", "last", "24", "state"))
    saved = getattr(saved, "item_metadata", saved)
    keys = {jax.tree_util.keystr(k) for k, _ in
            jax.tree_util.tree_flatten_with_path(saved["params"])[0]}
    assert keys == set(_flat(adapters)), keys
    # Export the merged model and load it back as a plain checkpoint.
    merged = _merge(params, state.params, lcfg)
    save_hf(str(tmp_path / "hf"), TINY, merged)
    cfg, loaded = load_hf(str(tmp_path / "hf"))
    assert cfg == TINY
    tokens = jnp.asarray(preference_batch(5)["chosen_tokens"])
    want = _logits(merged, tokens)
    np.testing.assert_allclose(_logits(loaded, tokens), want, rtol=1e-5, atol=1e-5)
    assert np.abs(want - _logits(params, tokens)).max() > 1e-3  # training changed it


def _runner_config(tmp_path, **lora):
    config = dpo_toy.get_config("smoke")
    config.workdir = str(tmp_path)
    config.data.toy_train, config.data.toy_eval = 64, 16
    config.loop.update(total_steps=4, eval_every=0, checkpoint_every=4, progress_bar=False,
                       async_checkpoints=False)
    config.optim.update(total_steps=4, warmup_steps=1)
    config.lora.update(lora)
    return config


def test_runner_lora_reference_free_and_export(tmp_path):
    config = _runner_config(tmp_path, rank=4, targets=("q", "v"))
    config.reference = "none"
    config.loss.name, config.loss.kwargs = "genarm.arm", {"beta": 0.5}
    config.export_hf = True
    built, state = run_dpo.run(config)
    assert built["ref_params"] is None and built["lora"] == LoraConfig(rank=4, targets=("q", "v"))
    assert set(state.params) == {"layers"} and set(state.params["layers"]["attn"]) == {"q", "v"}
    merged = run_dpo.policy_params(built, state)
    cfg, exported = load_hf(str(tmp_path / "hf_export"))
    for x, y in zip(jax.tree.leaves(exported), jax.tree.leaves(jax.device_get(merged))):
        np.testing.assert_array_equal(x, y)
    base_q = built["params"]["layers"]["attn"]["q"]["kernel"]
    assert not np.array_equal(exported["layers"]["attn"]["q"]["kernel"], base_q)
    np.testing.assert_array_equal(exported["layers"]["attn"]["k"]["kernel"],
                                  built["params"]["layers"]["attn"]["k"]["kernel"])


def test_lora_section_takes_command_line_overrides():
    from jaxalign.main import check_overrides
    check_overrides(["--config=experiments/dpo_toy.py:smoke", "--config.lora.rank=8",
                     "--config.lora.targets=q,v", "--config.reference=none"])
    config = dpo_toy.get_config("smoke")
    assert run_dpo.lora_config(config) is None  # rank 0: a full fine-tune
    config.lora.update(rank=8, targets=("q,v",))  # what --config.lora.targets=q,v gives
    assert run_dpo.lora_config(config) == LoraConfig(rank=8, alpha=16.0, targets=("q", "v"))


def test_reference_none_needs_a_reference_free_loss(tmp_path):
    config = _runner_config(tmp_path)
    config.reference = "none"
    with pytest.raises(ValueError, match=r"reference='none'.*'dpo.sigmoid' needs a reference"):
        run_dpo.build(config)
    config.reference = "frozen"
    with pytest.raises(ValueError, match="config.reference: expected one of"):
        run_dpo.build(config)
    assert not os.path.exists(tmp_path / "data")  # checked before anything is built


def test_paper_scale_lora_dry_run():
    config = dpo_mistral_ultrafeedback.get_config()
    full = run_dpo.dry_run(config)
    config.lora.update(rank=8, alpha=16.0, targets=("q", "k", "v"))  # GenARM's HH-RLHF LoRA
    report = run_dpo.dry_run(config)
    # Mistral-7B: 32 layers, q 4096 -> 4096, k and v 4096 -> 1024; a [in, 8], b [8, out].
    per_layer = (4096 * 8 + 8 * 4096) + 2 * (4096 * 8 + 8 * 1024)
    assert report["trainable"] == 32 * per_layer == 4_718_592
    assert {"loss", "reward_accuracy", "grad_norm"} <= set(report["metrics"])
    lo, hi = report["estimates"]["v5e-8"], full["estimates"]["v5e-8"]
    assert lo.optimizer < hi.optimizer / 100 and lo.gradients < hi.gradients / 4
    assert lo.params > hi.params and lo.total < hi.total
