"""Named Cloud TPU slices (accelerator types) -> chips, hosts and HBM per chip, and the meshes a
dry run sizes on them (`config.dry_run_meshes`). No devices needed: a laptop sizes a pod.

    tpu_slice("v5p-64")        # TpuSlice(name='v5p-64', chips=32, hosts=8, hbm_gib=95.0)
    tpu_slice("v5litepod-8")   # 8 chips on 1 host, 16 GiB each ("v5e-8" is the same slice)

The number in an accelerator type counts TensorCores: two per chip on v4 and v5p (v5p-64 is
32 chips), one on v5e and v6e (v5litepod-8 is 8 chips). Sources (Cloud TPU documentation):
  v4   https://cloud.google.com/tpu/docs/v4: 32 GiB HBM per chip, 2 TensorCores per chip,
       4 chips per host (v4-8 is one host).
  v5p  https://docs.cloud.google.com/tpu/docs/v5p: 95 GiB HBM per chip, 2 TensorCores per chip,
       4 chips per host (2x2x1: 8 cores, 4 chips, 1 host; 2x4x4: 64 cores, 32 chips, 8 hosts).
  v5e  https://cloud.google.com/tpu/docs/v5e: 16 GB HBM per chip, one TensorCore per chip;
       slices of 1, 4 and 8 chips are one host, larger ones (up to 256 chips) are made of
       4-chip hosts (ct5lp-hightpu-4t,
       https://cloud.google.com/kubernetes-engine/docs/concepts/plan-tpus).
  v6e  https://cloud.google.com/tpu/docs/v6e: 32 GB HBM per chip, laid out as v5e.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TpuSlice:
    name: str
    chips: int
    hosts: int
    hbm_gib: float  # per chip

    @property
    def hbm_bytes(self) -> int:
        return int(self.hbm_gib * 2**30)


@dataclasses.dataclass(frozen=True)
class Generation:
    cores_per_chip: int  # TensorCores per chip: what the accelerator type's number counts
    chips_per_host: int  # of a multi-host slice
    hosts_one: int  # the largest slice (in chips) that is a single host
    hbm_gib: float
    sizes: tuple[int, ...] = ()  # the numbers a name may carry; () = any multiple of 8 up to max
    max_cores: int = 0


V5E_SIZES = (1, 4, 8, 16, 32, 64, 128, 256)
GENERATIONS = {
    "v4": Generation(cores_per_chip=2, chips_per_host=4, hosts_one=4, hbm_gib=32.0,
                     max_cores=8192),
    "v5p": Generation(cores_per_chip=2, chips_per_host=4, hosts_one=4, hbm_gib=95.0,
                      max_cores=12288),
    "v5litepod": Generation(cores_per_chip=1, chips_per_host=4, hosts_one=8, hbm_gib=16.0,
                            sizes=V5E_SIZES),
    "v6e": Generation(cores_per_chip=1, chips_per_host=4, hosts_one=8, hbm_gib=32.0,
                      sizes=V5E_SIZES),
}
ALIASES = {"v5e": "v5litepod"}  # v5e-8 is how people (and older configs here) say v5litepod-8


def known_slices() -> str:
    """The names `tpu_slice` accepts, in words (for error messages)."""
    out = []
    for prefix, g in GENERATIONS.items():
        if g.sizes:
            out.append(", ".join(f"{prefix}-{n}" for n in g.sizes))
        else:
            out.append(f"{prefix}-<N> (N a multiple of 8, 8..{g.max_cores})")
    return "; ".join(out) + f" ({', '.join(f'{a}-N = {b}-N' for a, b in ALIASES.items())})"


def tpu_slice(name: str) -> TpuSlice:
    """The slice of accelerator type `name`; ValueError naming the known ones otherwise."""
    prefix, _, number = str(name).rpartition("-")
    g = GENERATIONS.get(ALIASES.get(prefix, prefix))
    cores = int(number) if number.isdigit() else 0
    if g is None or not (cores in g.sizes if g.sizes else
                         (cores >= 8 and cores % 8 == 0 and cores <= g.max_cores)):
        raise ValueError(f"unknown TPU slice {name!r}; known: {known_slices()}")
    chips = cores // g.cores_per_chip
    hosts = 1 if chips <= g.hosts_one else chips // g.chips_per_host
    return TpuSlice(str(name), chips, hosts, g.hbm_gib)


@dataclasses.dataclass(frozen=True)
class SizedMesh:
    """One entry of `dry_run_meshes`: a mesh shape, the device's HBM (None: not given, no
    "fits" verdict) and the slice it came from (None for an explicit mesh)."""

    axes: dict  # data, fsdp, model
    hbm_bytes: int | None
    slice: TpuSlice | None = None

    def describe(self) -> str:
        shape = " x ".join(f"{k} {v}" for k, v in self.axes.items())
        if self.slice is None:
            return shape
        s = self.slice
        return f"{s.name}: {s.chips} chips, {s.hosts} host(s), {s.hbm_gib:g} GiB each; {shape}"


AXES = ("data", "fsdp", "model")


def sized_mesh(entry, where: str = "dry_run_meshes") -> SizedMesh:
    """One `dry_run_meshes` entry as a SizedMesh. An entry is:
      - a slice name ("v5p-64"): the default layout, fsdp over all its chips (data = model = 1;
        FSDP shards params, optimizer state and gradients over every chip, the least memory per
        device; data-parallel replicas would only add copies, and rows split over data x fsdp
        the same either way, so for sizing memory this layout is the one that matters);
      - dict(slice="v5p-64", data=..., fsdp=..., model=...): axes not given are 1, except
        fsdp, which takes the chips the others leave; their product must be the chip count;
      - dict(data=..., fsdp=..., model=..., hbm_gib=...): an explicit mesh (hbm_gib optional).
    `where` names the entry in errors.
    """
    if isinstance(entry, str):
        entry = {"slice": entry}
    entry = dict(entry)
    unknown = set(entry) - {*AXES, "slice", "hbm_gib"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; known: "
                         f"{[*AXES, 'slice', 'hbm_gib']}")
    if "slice" not in entry:
        hbm = entry.pop("hbm_gib", None)
        return SizedMesh({k: int(entry.get(k, 1)) for k in AXES},
                         None if hbm is None else int(hbm * 2**30))
    if "hbm_gib" in entry:
        raise ValueError(f"{where}: give slice (its HBM is known) or hbm_gib, not both")
    s = tpu_slice(entry["slice"])
    data, model = int(entry.get("data", 1)), int(entry.get("model", 1))
    fsdp = int(entry.get("fsdp", s.chips // max(1, data * model)))
    if data * fsdp * model != s.chips:
        raise ValueError(f"{where}: data {data} x fsdp {fsdp} x model {model} is not the "
                         f"{s.chips} chips of {s.name}")
    return SizedMesh(dict(data=data, fsdp=fsdp, model=model), s.hbm_bytes, s)


def sized_meshes(entries) -> dict[str, SizedMesh]:
    """`config.dry_run_meshes` as {name: SizedMesh}: a mapping {name: entry} (see `sized_mesh`)
    or a list of slice names (each its own name); None or empty: {}."""
    if not entries:
        return {}
    if isinstance(entries, str):
        entries = [entries]
    if not hasattr(entries, "items"):  # a list of names (a dict or ConfigDict has items)
        return {str(n): sized_mesh(n, f"dry_run_meshes[{n!r}]") for n in entries}
    return {str(k): sized_mesh(v, f"dry_run_meshes[{k!r}]") for k, v in entries.items()}
