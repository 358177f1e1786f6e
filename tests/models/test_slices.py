"""Named TPU slices -> chips, hosts, HBM; `dry_run_meshes` entries; KV-cache bytes by hand.

    .venv/bin/python -m pytest tests/models/test_slices.py -q      # under a second
"""

import pytest

from jaxalign.models.presets import preset
from jaxalign.models.sizing import abstract_mesh, kv_cache_bytes
from jaxalign.models.slices import sized_mesh, sized_meshes, tpu_slice


@pytest.mark.parametrize("name,chips,hosts,hbm_gib", [
    ("v4-8", 4, 1, 32), ("v4-32", 16, 4, 32),
    ("v5litepod-1", 1, 1, 16), ("v5litepod-8", 8, 1, 16), ("v5e-8", 8, 1, 16),
    ("v5litepod-16", 16, 4, 16), ("v5litepod-256", 256, 64, 16),
    ("v5p-8", 4, 1, 95), ("v5p-16", 8, 2, 95), ("v5p-64", 32, 8, 95), ("v5p-1024", 512, 128, 95),
    ("v6e-8", 8, 1, 32), ("v6e-64", 64, 16, 32),
], ids=lambda x: str(x))
def test_slice_name_resolves_to_chips_hosts_and_hbm(name, chips, hosts, hbm_gib):
    s = tpu_slice(name)
    assert (s.chips, s.hosts, s.hbm_gib, s.hbm_bytes) == (chips, hosts, hbm_gib, hbm_gib * 2**30)


@pytest.mark.parametrize("name", ["v5p-60", "v5litepod-2", "v5litepod-512", "v7-8", "tpu",
                                  "v5p-", "v4-16384"])
def test_unknown_slice_is_an_error_naming_the_known(name):
    with pytest.raises(ValueError, match=rf"unknown TPU slice '{name}'; known: v4-<N> .*"
                                         r"v5p-<N> .*v5litepod-1, v5litepod-4, .*v6e-256"):
        tpu_slice(name)


@pytest.mark.parametrize("entry,axes,hbm_gib", [
    ("v5p-64", dict(data=1, fsdp=32, model=1), 95),  # default layout: fsdp over all chips
    (dict(slice="v5p-64", data=4), dict(data=4, fsdp=8, model=1), 95),  # fsdp takes the rest
    (dict(slice="v5litepod-8", fsdp=4, model=2), dict(data=1, fsdp=4, model=2), 16),
    (dict(data=1, fsdp=8, model=1, hbm_gib=16), dict(data=1, fsdp=8, model=1), 16),  # explicit
    (dict(data=2, fsdp=1, model=1), dict(data=2, fsdp=1, model=1), None),  # no HBM: no verdict
], ids=["name", "slice+data", "slice+fsdp+model", "explicit", "explicit-no-hbm"])
def test_dry_run_mesh_entries(entry, axes, hbm_gib):
    m = sized_mesh(entry)
    assert m.axes == axes
    assert m.hbm_bytes == (None if hbm_gib is None else hbm_gib * 2**30)


@pytest.mark.parametrize("entry,match", [
    (dict(slice="v5p-64", fsdp=16), r"dry_run_meshes\['x'\]: data 1 x fsdp 16 x model 1 is not "
                                    r"the 32 chips of v5p-64"),
    (dict(slice="v5p-64", hbm_gib=95), r"dry_run_meshes\['x'\]: give slice .* or hbm_gib"),
    (dict(slice="v5p-64", fdsp=32), r"dry_run_meshes\['x'\]: unknown keys \['fdsp'\]"),
    ("v5p-63", r"unknown TPU slice 'v5p-63'"),
], ids=["wrong-product", "slice-and-hbm", "typo", "unknown-name"])
def test_bad_entries_name_the_entry(entry, match):
    with pytest.raises(ValueError, match=match):
        sized_meshes({"x": entry})


def test_a_list_of_slice_names_names_itself():
    assert {k: m.axes["fsdp"] for k, m in sized_meshes(["v5e-8", "v5p-64"]).items()} == {
        "v5e-8": 8, "v5p-64": 32}
    assert sized_meshes(None) == {} and abstract_mesh(**sized_mesh("v5p-64").axes).size == 32


def test_kv_cache_bytes_by_hand():
    # bench-tiny: 2 layers, 2 KV heads of 64 / 4 = 16 dims; per row K and V of every layer, plus
    # the [rows, slots] bool slot mask
    cfg = preset("bench-tiny", dtype="float32")
    assert kv_cache_bytes(cfg, rows=12, slots=23) == 12 * (2 * 2 * 2 * 16 * 23 * 4 + 23)
    cfg = preset("mistral-7b-v0.1", dtype="bfloat16")  # 32 layers, 8 KV heads of 128
    assert kv_cache_bytes(cfg, rows=5, slots=1534) == 5 * (2 * 32 * 8 * 128 * 1534 * 2 + 1534)
