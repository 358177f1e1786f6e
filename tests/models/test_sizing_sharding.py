"""Exact sizes from configs alone, the same logits on a sharded 8-device mesh, and placement."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.models import Transformer, init_params, place_params
from jaxalign.models.hf import load_hf
from jaxalign.models.presets import preset
from jaxalign.models.sizing import abstract_mesh, param_bytes_per_device, param_count
from jaxalign.sharding import batch_sharding, make_mesh, place
from jaxalign.train import trainer
from tests.models.hf_tiny import left_padded_batch, make_hf_model


def test_exact_parameter_counts():
    assert param_count(preset("mistral-7b-v0.1")) == 7_241_732_096
    assert param_count(preset("llama-3-8b")) == 8_030_261_248


def test_per_device_bytes_on_a_slice_without_devices():
    cfg = preset("mistral-7b-v0.1", param_dtype="bfloat16")
    total = param_bytes_per_device(cfg)
    assert total == 7_241_732_096 * 2
    per_dev = param_bytes_per_device(cfg, abstract_mesh(fsdp=8))
    # Every leaf, norm scales included, has an `embed` axis divisible by 8.
    assert per_dev == total // 8
    # fsdp=4 x model=2: matrices still split 8 ways, norm scales (embed only) just 4 ways.
    norms = (2 * 32 + 1) * 4096 * 2
    assert param_bytes_per_device(cfg, abstract_mesh(fsdp=4, model=2)) == (
        (total - norms) // 8 + norms // 4)


def test_count_matches_instantiated_params():
    cfg = preset("bench-tiny")
    params = init_params(cfg, jax.random.key(0))
    assert param_count(cfg) == sum(x.size for x in jax.tree.leaves(params))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_sharded_load_and_forward_match_single_device(family, tmp_path):
    assert jax.device_count() == 8
    make_hf_model(family).save_pretrained(tmp_path)
    cfg, params = load_hf(str(tmp_path))
    mesh = make_mesh(data=2, fsdp=2, model=2)
    _, sharded = load_hf(str(tmp_path), mesh=mesh)
    q = sharded["layers"]["attn"]["q"]["kernel"]
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "model")
    assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.shape == (2, 16, 16)
    tokens, mask, positions = left_padded_batch(seed=4, batch=4)
    fwd = jax.jit(Transformer(cfg).apply)
    want, _, _ = fwd({"params": params}, tokens, positions, mask)
    inputs = [jax.device_put(jnp.asarray(x), batch_sharding(mesh)) for x in (tokens, positions, mask)]
    got, _, _ = fwd({"params": sharded}, *inputs)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)


PLACE = {  # case: (logical axes, mesh kwargs or None, spec of leaf "w" [8, 4] or None: one device)
    "logical_axes": ({"w": ("embed", "mlp"), "b": ("mlp",)}, dict(fsdp=4, model=2),
                     ("fsdp", "model")),
    "replicated": (None, dict(fsdp=8), ()),
    "no_mesh": ({"w": ("embed", "mlp"), "b": ("mlp",)}, None, None),
}


@pytest.mark.parametrize("axes,mesh_kw,spec", PLACE.values(), ids=PLACE.keys())
def test_place_puts_host_and_device_trees_on_the_mesh(axes, mesh_kw, spec):
    assert trainer.place_params is place_params  # one copy, still importable from the trainer
    mesh = make_mesh(**mesh_kw) if mesh_kw else None
    tree = {"w": np.arange(32, dtype=np.float64).reshape(8, 4), "b": np.ones(4, np.float32)}
    for src in (tree, jax.device_put(tree)):  # numpy on the host, or arrays already on a device
        out = place(src, axes, mesh)
        assert out["w"].dtype == jnp.float32 and np.array_equal(out["w"], tree["w"])
        if spec is None:
            assert out["w"].sharding == jax.sharding.SingleDeviceSharding(jax.devices()[0])
        else:
            assert out["w"].sharding.spec == jax.sharding.PartitionSpec(*spec)
