"""Array checksums: the same on any sharding and on the host, changed by any flipped bit."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxalign.checksum import leaf_checksums, tree_fingerprint
from jaxalign.sharding import make_mesh


def test_checksums_are_sharding_invariant_and_see_every_bit():
    rng = np.random.default_rng(0)
    tree = {"w": rng.normal(size=(16, 8)).astype(np.float32),
            "b": jnp.asarray(rng.normal(size=(8,)), jnp.bfloat16),
            "step": np.int32(7), "mask": np.array([True, False]), "key": jax.random.key(3)}
    host = leaf_checksums(tree)
    mesh = make_mesh(data=8)
    sharded = dict(tree, w=jax.device_put(tree["w"], NamedSharding(mesh, P("data", None))))
    assert leaf_checksums(sharded) == host
    assert set(host) == {"w", "b", "step", "mask", "key"}
    flipped = tree["w"].copy()
    flipped.view(np.uint32)[3, 2] ^= 1  # one bit of one value: still a finite float
    assert leaf_checksums(dict(tree, w=flipped))["w"] != host["w"]
    swapped = tree["w"].copy()
    swapped[[0, 1]] = swapped[[1, 0]]  # the same values in another order
    assert leaf_checksums(dict(tree, w=swapped))["w"] != host["w"]
    assert tree_fingerprint(sharded) == tree_fingerprint(tree)
    assert tree_fingerprint(dict(tree, w=flipped)) != tree_fingerprint(tree)


def test_inner_axis_sharding_gives_the_same_sums():
    x = np.arange(64 * 32, dtype=np.float32).reshape(64, 32) / 7
    mesh = make_mesh(data=2, fsdp=4)
    inner = jax.device_put(x, NamedSharding(mesh, P("data", "fsdp")))
    assert leaf_checksums({"x": inner}) == leaf_checksums({"x": x})
