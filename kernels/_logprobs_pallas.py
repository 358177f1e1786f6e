"""The fused log-prob kernels behind `jaxalign.kernels.logprobs.pallas_logprobs` (whose
docstring gives the algorithm, the tiling and the memory): the tile arithmetic shared by both
backends, the three TPU (Mosaic) kernels and the three GPU (Triton) kernels, and `PATHS`,
backend -> (forward, backward). `tiling(...)` validates the block options and fills the
defaults.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltr

from ._common import softcap as softcap_fn

# --- The fused Pallas kernel ----------------------------------------------------------------
# Rows are the N = B * T positions, padded to a multiple of block_rows (padded rows get a zero
# cotangent and are sliced off). The TPU path pads the vocabulary only when block_vocab does not
# divide V; the GPU path never pads it (masked loads). Columns >= V are -inf logits in the
# forward and have zero gradient.

_TPU_VMEM_BUDGET = 14 * 2**20  # of v5e's 16 MiB scoped VMEM; the rest for Mosaic's own scratch
_GPU_BLOCK_D = 64  # the GPU kernels' loop over D: chunks of this many features


@dataclasses.dataclass(frozen=True)
class _Tiling:
    """The static settings of one fused log-prob call (hashable: a custom-VJP static argument)."""
    backend: str
    interpret: Any  # bool or pltpu.InterpretParams
    vocab: int  # V before padding
    block_rows: int
    block_vocab: int
    block_d: int  # GPU only: the D chunk
    softcap: float | None
    vmem_limit: int | None = None  # TPU only: raised above the default when the blocks need it


def _tpu_vmem_bytes(block_rows, block_vocab, D, itemsize):
    """VMEM of the largest of the three TPU kernels: double-buffered input and output blocks,
    the f32 scratch accumulator and about three f32 [block_rows, block_vocab] temporaries."""
    br, bv, s = block_rows, block_vocab, itemsize
    tiles = 3 * 4 * br * bv
    forward = 2 * s * (br * D + D * bv) + tiles
    d_hidden = 2 * s * (2 * br * D + D * bv) + 4 * br * D + tiles
    d_unembed = 2 * s * (br * D + 2 * D * bv) + 4 * D * bv + tiles
    return max(forward, d_hidden, d_unembed)


def _check_block(name, value, ok, rule):
    if value is not None and not (isinstance(value, int) and value > 0 and ok(value)):
        raise ValueError(f"pallas_logprobs: {name} must be {rule}, got {value!r}")


def tiling(backend, interpret, N, D, V, itemsize, block_rows, block_vocab, softcap):
    """Validate the block options and fill in the defaults for `backend`."""
    if backend == "tpu":  # Mosaic: the last two dims of a block divisible by (8, 128)
        _check_block("block_rows", block_rows, lambda b: b % 8 == 0, "a multiple of 8 on TPU")
        _check_block("block_vocab", block_vocab, lambda b: b % 128 == 0,
                     "a multiple of 128 on TPU")
        rows = [block_rows] if block_rows else sorted(
            {min(b, -(-N // 8) * 8) for b in (256, 128, 64, 32, 16, 8)}, reverse=True)
        vocabs = [block_vocab] if block_vocab else (
            [b for b in (512, 384, 256, 128) if V % b == 0] or [128])  # dividing V: no copy
        fits = [(br, bv) for br in rows for bv in vocabs
                if _tpu_vmem_bytes(br, bv, D, itemsize) <= _TPU_VMEM_BUDGET]
        br, bv = fits[0] if fits else (rows[-1], vocabs[-1])  # given blocks are kept
        vmem = _tpu_vmem_bytes(br, bv, D, itemsize)
        return _Tiling(backend, interpret, V, br, bv, D, softcap,
                       None if vmem <= _TPU_VMEM_BUDGET else vmem + 4 * 2**20)
    if not isinstance(interpret, bool):  # pltpu.InterpretParams is the TPU interpreter's
        raise ValueError(f"pallas_logprobs: interpret must be None or a bool on the GPU path, "
                         f"got {interpret!r}")
    pow2 = lambda b: b >= 16 and b & (b - 1) == 0  # noqa: E731  (Triton: power-of-two, dot >= 16)
    _check_block("block_rows", block_rows, pow2, "a power of two >= 16 on GPU")
    _check_block("block_vocab", block_vocab, pow2, "a power of two >= 16 on GPU")
    br = block_rows or min(64, max(16, pl.next_power_of_2(N)))
    block_d = min(_GPU_BLOCK_D, max(16, pl.next_power_of_2(D)))
    return _Tiling(backend, interpret, V, br, block_vocab or 128, block_d, softcap)


def _capped_logits(raw, cols, tiling):
    """float32 soft-capped logits of one tile, -inf at the padded columns (>= V)."""
    return jnp.where(cols < tiling.vocab, softcap_fn(raw, tiling.softcap), -jnp.inf)


def _online_lse(logits, cols, t_Rx1, m_Rx1, l_Rx1, tl_Rx1):
    """One vocabulary tile into the running max m, sum l of exp(logit - m), target logit tl."""
    m_new = jnp.maximum(m_Rx1, logits.max(axis=1, keepdims=True))
    l_new = l_Rx1 * jnp.exp(m_Rx1 - m_new) + jnp.exp(logits - m_new).sum(axis=1, keepdims=True)
    tl_new = tl_Rx1 + jnp.where(cols == t_Rx1, logits, 0.0).sum(axis=1, keepdims=True)
    return m_new, l_new, tl_new


def _dlogits(logits, cols, t_Rx1, lse_Rx1, g_Rx1, tiling):
    """d logp / d logits of a tile times the cotangent: g (onehot - softmax), times the
    soft-cap's derivative 1 - tanh^2 = 1 - (capped / cap)^2; 0 at the padded columns."""
    d = g_Rx1 * ((cols == t_Rx1).astype(jnp.float32) - jnp.exp(logits - lse_Rx1))
    if tiling.softcap is not None:
        d = d * (1 - jnp.square(logits / tiling.softcap))
    return jnp.where(cols < tiling.vocab, d, 0.0)  # (the -inf logits made nan there)


_NT = (((1,), (1,)), ((), ()))  # a @ b.T
_TN = (((0,), (0,)), ((), ()))  # a.T @ b


# TPU (Mosaic): a grid of (row tiles, vocab tiles) or (vocab tiles, row tiles), the reduction
# axis last and "arbitrary", whole-D blocks, f32 VMEM scratch accumulators.

def _tpu_tile(h_ref, w_ref, b_ref, col0, tiling):
    h, w = h_ref[...], w_ref[...]
    dtype = jnp.promote_types(h.dtype, w.dtype)
    raw = jnp.dot(h.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)
    cols = col0 + jax.lax.broadcasted_iota(jnp.int32, raw.shape, 1)
    return _capped_logits(raw + b_ref[...].astype(jnp.float32), cols, tiling), cols, dtype


def _tpu_forward_kernel(h_ref, w_ref, b_ref, t_ref, logp_ref, lse_ref, m_ref, l_ref, tl_ref, *,
                        tiling):
    """Forward, program (i, j) of grid (row tiles, vocab tiles): rows i against vocab tile j,
    folded into the running (m, l, tl) of rows i; the last j writes lse = m + log l and
    logp = tl - lse. VMEM: 2 s (br D + D bv) for the double-buffered blocks, 3 [br, 1] f32
    scratch, ~3 [br, bv] f32 temporaries; HBM: hidden read once, unembed N / br times."""
    j = pl.program_id(1)

    @pl.when(j == 0)
    def _init():
        m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, jnp.float32)
        l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
        tl_ref[...] = jnp.zeros(tl_ref.shape, jnp.float32)

    logits, cols, _ = _tpu_tile(h_ref, w_ref, b_ref, j * tiling.block_vocab, tiling)
    m_ref[...], l_ref[...], tl_ref[...] = _online_lse(logits, cols, t_ref[...], m_ref[...],
                                                      l_ref[...], tl_ref[...])

    @pl.when(j == pl.num_programs(1) - 1)
    def _finish():
        lse = m_ref[...] + jnp.log(l_ref[...])
        lse_ref[...] = lse
        logp_ref[...] = tl_ref[...] - lse


def _tpu_dhidden_kernel(h_ref, w_ref, b_ref, t_ref, lse_ref, g_ref, dh_ref, acc_ref, *, tiling):
    """d hidden, program (i, j) of grid (row tiles, vocab tiles): acc[rows i] +=
    dlogits(i, j) @ unembed[:, j].T, written at the last j. VMEM: 2 s (2 br D + D bv) blocks,
    a [br, D] f32 accumulator, ~3 [br, bv] f32 temporaries; HBM: unembed read N / br times."""
    j = pl.program_id(1)

    @pl.when(j == 0)
    def _init():
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    logits, cols, dtype = _tpu_tile(h_ref, w_ref, b_ref, j * tiling.block_vocab, tiling)
    d = _dlogits(logits, cols, t_ref[...], lse_ref[...], g_ref[...], tiling)
    acc_ref[...] += jax.lax.dot_general(d.astype(dtype), w_ref[...].astype(dtype), _NT,
                                        preferred_element_type=jnp.float32)

    @pl.when(j == pl.num_programs(1) - 1)
    def _finish():
        dh_ref[...] = acc_ref[...].astype(dh_ref.dtype)


def _tpu_dunembed_kernel(h_ref, w_ref, b_ref, t_ref, lse_ref, g_ref, dw_ref, db_ref, dw_acc,
                         db_acc, *, tiling):
    """d unembed and d bias, program (j, i) of grid (vocab tiles, row tiles): acc[:, vocab j]
    += hidden[rows i].T @ dlogits(i, j), written at the last i. VMEM: 2 s (br D + 2 D bv)
    blocks, [D, bv] + [1, bv] f32 accumulators, ~3 [br, bv] f32 temporaries; HBM: unembed
    read once, hidden V / bv times."""
    j, i = pl.program_id(0), pl.program_id(1)

    @pl.when(i == 0)
    def _init():
        dw_acc[...] = jnp.zeros(dw_acc.shape, jnp.float32)
        db_acc[...] = jnp.zeros(db_acc.shape, jnp.float32)

    logits, cols, dtype = _tpu_tile(h_ref, w_ref, b_ref, j * tiling.block_vocab, tiling)
    d = _dlogits(logits, cols, t_ref[...], lse_ref[...], g_ref[...], tiling)
    dw_acc[...] += jax.lax.dot_general(h_ref[...].astype(dtype), d.astype(dtype), _TN,
                                       preferred_element_type=jnp.float32)
    db_acc[...] += d.sum(axis=0, keepdims=True)

    @pl.when(i == pl.num_programs(1) - 1)
    def _finish():
        dw_ref[...] = dw_acc[...].astype(dw_ref.dtype)
        db_ref[...] = db_acc[...].astype(db_ref.dtype)


def _tpu_call(kernel, tiling, grid, in_specs, out_specs, out_shape, scratch):
    return pl.pallas_call(
        functools.partial(kernel, tiling=tiling), grid=grid, in_specs=in_specs,
        out_specs=out_specs, out_shape=out_shape,
        scratch_shapes=[pltpu.VMEM(s, jnp.float32) for s in scratch],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary"),
                                             vmem_limit_bytes=tiling.vmem_limit),
        interpret=tiling.interpret)


def _tpu_specs(tiling, D, rows_first):
    """BlockSpecs of (hidden, unembed, bias, targets, [lse, g]) on a (rows, vocab) grid, or on a
    (vocab, rows) grid when not rows_first."""
    br, bv = tiling.block_rows, tiling.block_vocab
    ij = (lambda f: f) if rows_first else (lambda f: lambda j, i: f(i, j))
    row_spec = pl.BlockSpec((br, 1), ij(lambda i, j: (i, 0)))
    return [pl.BlockSpec((br, D), ij(lambda i, j: (i, 0))),
            pl.BlockSpec((D, bv), ij(lambda i, j: (0, j))),
            pl.BlockSpec((1, bv), ij(lambda i, j: (0, j))), row_spec, row_spec, row_spec]


def _tpu_forward(h_NxD, w_DxV, b_V, t_N, tiling):
    (N, D), V = h_NxD.shape, w_DxV.shape[1]
    br = tiling.block_rows
    specs = _tpu_specs(tiling, D, rows_first=True)
    out = jax.ShapeDtypeStruct((N, 1), jnp.float32)
    logp_Nx1, lse_Nx1 = _tpu_call(
        _tpu_forward_kernel, tiling, (N // br, V // tiling.block_vocab), specs[:4],
        [specs[3], specs[3]], [out, out], [(br, 1)] * 3,
    )(h_NxD, w_DxV, b_V[None].astype(jnp.float32), t_N[:, None])
    return logp_Nx1[:, 0], lse_Nx1[:, 0]


def _tpu_backward(h_NxD, w_DxV, b_V, t_N, lse_N, g_N, tiling):
    (N, D), V = h_NxD.shape, w_DxV.shape[1]
    br, bv = tiling.block_rows, tiling.block_vocab
    args = (h_NxD, w_DxV, b_V[None].astype(jnp.float32), t_N[:, None], lse_N[:, None],
            g_N[:, None])  # bias as float32 [1, V] (a [V] copy: Mosaic's easiest layout)
    specs = _tpu_specs(tiling, D, rows_first=True)
    dh_NxD = _tpu_call(_tpu_dhidden_kernel, tiling, (N // br, V // bv), specs, specs[0],
                       jax.ShapeDtypeStruct((N, D), h_NxD.dtype), [(br, D)])(*args)
    specs = _tpu_specs(tiling, D, rows_first=False)
    dw_DxV, db_1xV = _tpu_call(
        _tpu_dunembed_kernel, tiling, (V // bv, N // br), specs, [specs[1], specs[2]],
        [jax.ShapeDtypeStruct((D, V), w_DxV.dtype), jax.ShapeDtypeStruct((1, V), jnp.float32)],
        [(D, bv), (1, bv)])(*args)
    return dh_NxD, dw_DxV, db_1xV[0].astype(b_V.dtype)


# GPU (Triton): one program per row tile (forward, d hidden) or vocab tile (d unembed), looping
# over the reduction axis and over D in chunks of block_d with masked loads (power-of-two
# block shapes; the ragged vocabulary and D edges are masked, not padded).

def _gpu_logits(h_ref, w_ref, b_ref, row0, col0, tiling):
    """The [block_rows, block_vocab] float32 logits tile at (row0, col0), its column ids, and
    the matmul dtype; the dot is accumulated over D chunks."""
    (D, V), br, bv, bd = w_ref.shape, tiling.block_rows, tiling.block_vocab, tiling.block_d
    dtype = jnp.promote_types(h_ref.dtype, w_ref.dtype)
    cols = col0 + jnp.arange(bv)

    def add_chunk(k, acc):
        feats = k * bd + jnp.arange(bd)
        h = pltr.load(h_ref.at[pl.ds(row0, br), pl.ds(k * bd, bd)], mask=feats[None, :] < D,
                      other=0)
        w = pltr.load(w_ref.at[pl.ds(k * bd, bd), pl.ds(col0, bv)],
                      mask=(feats[:, None] < D) & (cols[None, :] < V), other=0)
        return acc + jnp.dot(h.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)

    raw = jax.lax.fori_loop(0, pl.cdiv(D, bd), add_chunk, jnp.zeros((br, bv), jnp.float32))
    b = pltr.load(b_ref.at[pl.ds(col0, bv)], mask=cols < V, other=0)
    return _capped_logits(raw + b[None, :].astype(jnp.float32), cols[None, :], tiling), \
        cols[None, :], dtype


def _gpu_dlogits(h_ref, w_ref, b_ref, t_ref, lse_ref, g_ref, row0, col0, tiling):
    logits, cols, dtype = _gpu_logits(h_ref, w_ref, b_ref, row0, col0, tiling)
    rows = pl.ds(row0, tiling.block_rows)
    d = _dlogits(logits, cols, t_ref[rows][:, None], lse_ref[rows][:, None],
                 g_ref[rows][:, None], tiling)
    return d, cols, dtype


def _gpu_forward_kernel(h_ref, w_ref, b_ref, t_ref, logp_ref, lse_ref, *, tiling):
    """Forward, program i of grid (row tiles,): rows i against every vocab tile in turn
    (fori_loop), online log-sum-exp carried in registers ([br, 1] x 3 f32, plus the [br, bv]
    f32 tile and one [br, bd], [bd, bv] chunk pair); HBM: unembed read N / br times, hidden
    V / bv times (from L2 mostly)."""
    br, bv = tiling.block_rows, tiling.block_vocab
    row0 = pl.program_id(0) * br
    t = t_ref[pl.ds(row0, br)][:, None]

    def add_tile(j, carry):
        logits, cols, _ = _gpu_logits(h_ref, w_ref, b_ref, row0, j * bv, tiling)
        return _online_lse(logits, cols, t, *carry)

    init = (jnp.full((br, 1), -jnp.inf, jnp.float32), jnp.zeros((br, 1), jnp.float32),
            jnp.zeros((br, 1), jnp.float32))
    m, l, tl = jax.lax.fori_loop(0, pl.cdiv(tiling.vocab, bv), add_tile, init)
    lse = m + jnp.log(l)
    lse_ref[pl.ds(row0, br)] = lse[:, 0]
    logp_ref[pl.ds(row0, br)] = (tl - lse)[:, 0]


def _gpu_dhidden_kernel(h_ref, w_ref, b_ref, t_ref, lse_ref, g_ref, dh_ref, *, tiling):
    """d hidden (float32), program i of grid (row tiles,): for each vocab tile j and D chunk
    k, dh[rows i, k] += dlogits(i, j) @ unembed[k, j].T, read-modified-written in place in
    HBM (the program owns rows i). Registers as the forward; HBM: unembed read 2 N / br times,
    the f32 [br, D] rows of dh read and written V / bv times (L2)."""
    (D, V), br, bv, bd = w_ref.shape, tiling.block_rows, tiling.block_vocab, tiling.block_d
    row0 = pl.program_id(0) * br
    chunk = lambda k: (pl.ds(row0, br), pl.ds(k * bd, bd))  # noqa: E731

    def zero(k, _):
        pltr.store(dh_ref.at[chunk(k)], jnp.zeros((br, bd), jnp.float32),
                   mask=(k * bd + jnp.arange(bd))[None, :] < D)
    jax.lax.fori_loop(0, pl.cdiv(D, bd), zero, None)

    def add_tile(j, _):
        d, cols, dtype = _gpu_dlogits(h_ref, w_ref, b_ref, t_ref, lse_ref, g_ref, row0, j * bv,
                                      tiling)
        d = d.astype(dtype)  # the matmul's inputs (as flash attention's backward)

        def add_chunk(k, _):
            feats = k * bd + jnp.arange(bd)
            w = pltr.load(w_ref.at[pl.ds(k * bd, bd), pl.ds(j * bv, bv)],
                          mask=(feats[:, None] < D) & (cols < V), other=0)
            mask = feats[None, :] < D
            dh = pltr.load(dh_ref.at[chunk(k)], mask=mask, other=0)
            dh = dh + jax.lax.dot_general(d, w.astype(dtype), _NT,
                                          preferred_element_type=jnp.float32)
            pltr.store(dh_ref.at[chunk(k)], dh, mask=mask)
        jax.lax.fori_loop(0, pl.cdiv(D, bd), add_chunk, None)
    jax.lax.fori_loop(0, pl.cdiv(V, bv), add_tile, None)


def _gpu_dunembed_kernel(h_ref, w_ref, b_ref, t_ref, lse_ref, g_ref, dw_ref, db_ref, *, tiling):
    """d unembed, d bias (float32), program j of grid (vocab tiles,): for each row tile i and
    D chunk k, dW[k, vocab j] += hidden[rows i, k].T @ dlogits(i, j), read-modified-written
    in place in HBM (the program owns columns j); d bias summed in registers. HBM: hidden
    read 2 V / bv times, the f32 [D, bv] columns of dW read and written N / br times (L2)."""
    (D, V), br, bv, bd = w_ref.shape, tiling.block_rows, tiling.block_vocab, tiling.block_d
    col0 = pl.program_id(0) * bv
    cols = col0 + jnp.arange(bv)
    chunk = lambda k: (pl.ds(k * bd, bd), pl.ds(col0, bv))  # noqa: E731
    def chunk_mask(k):
        return ((k * bd + jnp.arange(bd))[:, None] < D) & (cols[None, :] < V)

    def zero(k, _):
        pltr.store(dw_ref.at[chunk(k)], jnp.zeros((bd, bv), jnp.float32), mask=chunk_mask(k))
    jax.lax.fori_loop(0, pl.cdiv(D, bd), zero, None)

    def add_rows(i, db):
        d, _, dtype = _gpu_dlogits(h_ref, w_ref, b_ref, t_ref, lse_ref, g_ref, i * br, col0,
                                   tiling)
        d_mm = d.astype(dtype)  # the matmul's inputs; d bias sums the float32 d

        def add_chunk(k, _):
            h = pltr.load(h_ref.at[pl.ds(i * br, br), pl.ds(k * bd, bd)],
                          mask=(k * bd + jnp.arange(bd))[None, :] < D, other=0)
            dw = pltr.load(dw_ref.at[chunk(k)], mask=chunk_mask(k), other=0)
            dw = dw + jax.lax.dot_general(h.astype(dtype), d_mm, _TN,
                                          preferred_element_type=jnp.float32)
            pltr.store(dw_ref.at[chunk(k)], dw, mask=chunk_mask(k))
        jax.lax.fori_loop(0, pl.cdiv(D, bd), add_chunk, None)
        return db + d.sum(axis=0)

    n_row_tiles = h_ref.shape[0] // br
    db = jax.lax.fori_loop(0, n_row_tiles, add_rows, jnp.zeros((bv,), jnp.float32))
    pltr.store(db_ref.at[pl.ds(col0, bv)], db, mask=cols < V)


def _gpu_call(kernel, tiling, grid, out_shape):
    return pl.pallas_call(
        functools.partial(kernel, tiling=tiling), grid=grid, out_shape=out_shape,
        compiler_params=pltr.CompilerParams(num_warps=4, num_stages=2),
        interpret=tiling.interpret)


def _gpu_forward(h_NxD, w_DxV, b_V, t_N, tiling):
    f32 = jax.ShapeDtypeStruct((h_NxD.shape[0],), jnp.float32)
    return _gpu_call(_gpu_forward_kernel, tiling, (h_NxD.shape[0] // tiling.block_rows,),
                     [f32, f32])(h_NxD, w_DxV, b_V, t_N)


def _gpu_backward(h_NxD, w_DxV, b_V, t_N, lse_N, g_N, tiling):
    (N, D), V = h_NxD.shape, w_DxV.shape[1]
    args = (h_NxD, w_DxV, b_V, t_N, lse_N, g_N)
    dh_NxD = _gpu_call(_gpu_dhidden_kernel, tiling, (N // tiling.block_rows,),
                       jax.ShapeDtypeStruct((N, D), jnp.float32))(*args)
    dw_DxV, db_V = _gpu_call(
        _gpu_dunembed_kernel, tiling, (pl.cdiv(V, tiling.block_vocab),),
        [jax.ShapeDtypeStruct((D, V), jnp.float32), jax.ShapeDtypeStruct((V,), jnp.float32)],
    )(*args)
    return (dh_NxD.astype(h_NxD.dtype), dw_DxV.astype(w_DxV.dtype), db_V.astype(b_V.dtype))


PATHS = {"tpu": (_tpu_forward, _tpu_backward), "gpu": (_gpu_forward, _gpu_backward)}
