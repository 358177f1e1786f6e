"""Attention of one new token per row over the KV cache (the decode step): the XLA reference
(`impl="xla"`) and a Pallas kernel (`impl="pallas"`), selected by name in `decode_attention`.

    out_Bx1xQxH = decode_attention(q_Bx1xQxH, k_BxMxHxS, v_BxMxSxH, mask_Bx1x1xS, scale, cap,
                                   impl="xla")

Layouts are the sampler's `KVCache`: keys [B, M, H, S] (slots last, so q.k is a plain matmul),
values [B, M, S, H]; M KV heads serve Q = M * E query heads (grouped-query attention, the E
queries of a KV head adjacent). `mask_Bx1x1xS` marks the slots each row may see (left padding,
causal order, sliding window all folded in by the caller); the row's own slot is always valid.
Scores are `q.k * scale` (None: H ** -0.5), soft-capped at `cap` (None: not), masked, and
softmaxed in float32.

The reference reads all S slots of every row; the Pallas kernel (`decode_attention_pallas`, a
TPU and a GPU path: its docstring gives the algorithm, tiling and memory) reads only the slot
blocks between each row's first and last valid slot.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltr

from ._common import pallas_target, softcap


def decode_attention_xla(q_Bx1xQxH, k_BxMxHxS, v_BxMxSxH, mask_Bx1x1xS, scale: float | None = None,
                         cap: float | None = None):
    """Grouped-query attention of one new token over a layer's cache (`KVCache` layout):
    `jax.nn.dot_product_attention` with T = 1, [B, 1, Q, H] out. Scores are multiplied by
    `scale` (None: H ** -0.5) and soft-capped at `cap` (None: not) before the mask.

    The E = Q / M queries of each KV head are grouped ([B, M, E, H]) and both products are
    plain batched matmuls over the cache as it lies: keys [B, M, H, S], values [B, M, S, H].
    Measured on 2 CPU cores (batch 32, 159 slots, 12 layers of 4 KV heads x 3 queries x 64):
    10 ms per step, against 27 ms for the same products on a [B, S, M, H] cache (which XLA
    transposes first) and 50 ms for `jax.nn.dot_product_attention` (one [1, H] x [H, S]
    product per query head).
    """
    B, _, Q, H = q_Bx1xQxH.shape
    M = k_BxMxHxS.shape[1]
    q_BxMxExH = q_Bx1xQxH.reshape(B, M, Q // M, H)
    s_BxMxExS = jnp.einsum("bmeh,bmhs->bmes", q_BxMxExH, k_BxMxHxS,
                           preferred_element_type=jnp.float32) * (scale or H ** -0.5)
    s_BxMxExS = softcap(s_BxMxExS, cap)
    s_BxMxExS = jnp.where(mask_Bx1x1xS[:, :, :1], s_BxMxExS, -jnp.inf)  # own slot always valid
    p_BxMxExS = jax.nn.softmax(s_BxMxExS, axis=-1).astype(v_BxMxSxH.dtype)
    out_BxMxExH = jnp.einsum("bmes,bmsh->bmeh", p_BxMxExS, v_BxMxSxH,
                             preferred_element_type=jnp.float32)
    return out_BxMxExH.reshape(B, 1, Q, H).astype(q_Bx1xQxH.dtype)


IMPLS = ("xla", "pallas")


def decode_attention(q_Bx1xQxH, k_BxMxHxS, v_BxMxSxH, mask_Bx1x1xS, scale: float | None = None,
                     cap: float | None = None, *, impl: str = "xla", **pallas_options):
    """[B, 1, Q, H] attention of each row's new token over its cache, by the implementation
    named `impl`: "xla" (`decode_attention_xla`) or "pallas" (`decode_attention_pallas`, with
    its `pallas_options`: block size, backend, interpret)."""
    if impl == "xla":
        if pallas_options:
            raise ValueError(f"impl='xla' takes no Pallas options, got {sorted(pallas_options)}")
        return decode_attention_xla(q_Bx1xQxH, k_BxMxHxS, v_BxMxSxH, mask_Bx1x1xS, scale, cap)
    if impl == "pallas":
        return decode_attention_pallas(q_Bx1xQxH, k_BxMxHxS, v_BxMxSxH, mask_Bx1x1xS, scale, cap,
                                       **pallas_options)
    raise ValueError(f"decode attention impl must be one of {IMPLS}, got {impl!r}")


def decode_attention_pallas(q_Bx1xQxH, k_BxMxHxS, v_BxMxSxH, mask_Bx1x1xS,
                            scale: float | None = None, cap: float | None = None, *,
                            block_slots: int | None = None, num_splits: int | None = None,
                            backend: str | None = None, interpret=None):
    """The Pallas kernel: [B, 1, Q, H] in q's dtype, the semantics of `decode_attention_xla`,
    reading only the cache slots between each row's first and last valid slot.

    Algorithm. The wrapper reduces the mask to each row's first and last valid slot (int32 [B])
    and hands the kernel the slot blocks of `block_slots` slots that overlap that range; inside
    a block the int32 mask masks exactly (it need not be contiguous). One program serves the E
    queries of one KV head of one row ([E, H] against [H, block] keys and [block, H] values) and
    keeps an online softmax: the running max m [E], sum l [E] and unnormalised output acc
    [E, H], all float32 (scores from a float32-accumulated matmul, `p` cast to the values'
    dtype for the second one, as the reference does). HBM bytes read per step: about
    2 * B * M * H * filled slots * itemsize (plus 4 bytes of mask per slot and KV head),
    against 2 * B * M * H * S * itemsize for the reference.

    TPU (`backend="tpu"`, Mosaic). Grid (B, M, S / block_slots), the slot axis sequential
    ("arbitrary"); first/last block as scalar prefetch, the index maps clamp the slot-block
    index into the row's valid range (blocks outside are not fetched: the same block index on
    consecutive steps is not copied again) and `pl.when` skips their compute. `block_slots` (by
    default the largest of 512, 256, 128 dividing S, else S) is a multiple of 128 dividing S,
    or S itself. VMEM per program: two buffers of keys and values, 4 * H * block_slots *
    itemsize, the mask blocks (2 * 8 * block_slots * 4 bytes, padded to 8 sublanes), q and
    out (E x H) and the f32 scratch m, l, acc ((E x H + 2 E) * 4): 0.5 MiB at H=128,
    block_slots=512, bfloat16.

    GPU (`backend="gpu"`, Triton; flash-decoding). Grid (B, M, num_splits): each program loops
    (`fori_loop` with bounds from first/last) over its share of the row's valid slot blocks
    with masked loads (no read past S, none past H) and writes its partial (m, l, acc); a JAX
    epilogue combines the splits. E is padded to at least 16 queries and H to a power of two
    (at least 16) in q only; the cache is read as it lies. `block_slots` (default 64) is a
    power of two >= 16; `num_splits` (default: enough for about 512 programs, at most one per
    slot block) splits the slot range. Shared memory per program: about num_stages (2) *
    2 * H * block_slots * itemsize for the pipelined key and value tiles (64 KiB at H=128,
    bfloat16) plus the [16, H] query tile.

    `scale` and `cap` are Python numbers (compiled in). `backend` "tpu" or "gpu" (None: the
    default device's, "tpu" on CPU); `interpret` None (True exactly on CPU), a bool, or (TPU
    path) a `pltpu.InterpretParams`, passed through to `pl.pallas_call`. Bad options raise
    ValueError.
    """
    backend, interpret = pallas_target(backend, interpret)
    B, T, Q, H = q_Bx1xQxH.shape
    M, S = k_BxMxHxS.shape[1], k_BxMxHxS.shape[3]
    if (T != 1 or Q % M or k_BxMxHxS.shape != (B, M, H, S) or v_BxMxSxH.shape != (B, M, S, H)
            or mask_Bx1x1xS.shape != (B, 1, 1, S)):
        raise ValueError(
            "decode attention takes q [B, 1, Q, H], k [B, M, H, S], v [B, M, S, H] and mask "
            f"[B, 1, 1, S] with Q a multiple of M, got {q_Bx1xQxH.shape}, {k_BxMxHxS.shape}, "
            f"{v_BxMxSxH.shape}, {mask_Bx1x1xS.shape}")
    if mask_Bx1x1xS.dtype != jnp.bool_:
        raise ValueError(f"mask_Bx1x1xS must be bool, got {mask_Bx1x1xS.dtype}")
    if not q_Bx1xQxH.dtype == k_BxMxHxS.dtype == v_BxMxSxH.dtype:
        raise ValueError("q, k and v must share a dtype (cast the cache to q's), got "
                         f"{q_Bx1xQxH.dtype}, {k_BxMxHxS.dtype}, {v_BxMxSxH.dtype}")
    if backend == "tpu":
        if num_splits is not None:
            raise ValueError("num_splits is an option of the GPU path (backend='gpu') only")
        if block_slots is None:
            block_slots = next((b for b in (512, 256, 128) if S % b == 0), S)
        if block_slots != S and (block_slots <= 0 or block_slots % 128 or S % block_slots):
            raise ValueError(f"block_slots must be a multiple of 128 dividing S={S}, or S, on "
                             f"TPU, got {block_slots}")
    else:
        if not isinstance(interpret, bool):
            raise ValueError(f"interpret must be None or a bool on the GPU path, got {interpret!r}")
        if block_slots is None:
            block_slots = min(64, max(16, _next_power_of_2(S)))
        if block_slots < 16 or block_slots != _next_power_of_2(block_slots):
            raise ValueError(f"block_slots must be a power of two >= 16 on GPU, got {block_slots}")
        if num_splits is None:
            num_splits = max(1, min(pl.cdiv(512, B * M), pl.cdiv(S, block_slots)))
        if num_splits < 1:
            raise ValueError(f"num_splits must be >= 1, got {num_splits}")
    scale = H ** -0.5 if scale is None else float(scale)
    cap = None if cap is None else float(cap)
    return _decode_attention_pallas(q_Bx1xQxH, k_BxMxHxS, v_BxMxSxH, mask_Bx1x1xS, scale, cap,
                                    backend, block_slots, num_splits, interpret)


def _next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


@functools.partial(jax.jit, static_argnums=(4, 5, 6, 7, 8, 9))
def _decode_attention_pallas(q_Bx1xQxH, k_BxMxHxS, v_BxMxSxH, mask_Bx1x1xS, scale, cap, backend,
                             block_slots, num_splits, interpret):
    B, _, Q, H = q_Bx1xQxH.shape
    M, S = k_BxMxHxS.shape[1], k_BxMxHxS.shape[3]
    q_BxMxExH = q_Bx1xQxH.reshape(B, M, Q // M, H)
    valid_BxS = mask_Bx1x1xS[:, 0, 0]
    first_B = jnp.argmax(valid_BxS, axis=1).astype(jnp.int32)
    last_B = (S - 1 - jnp.argmax(valid_BxS[:, ::-1], axis=1)).astype(jnp.int32)
    mask_Bx1xS = valid_BxS[:, None].astype(jnp.int32)
    # float32 products in full precision (the default is one bfloat16 pass on TPU, TF32 on GPU)
    precision = jax.lax.Precision.HIGHEST if q_Bx1xQxH.dtype == jnp.float32 else None
    kernel = functools.partial(_tpu_kernel if backend == "tpu" else _gpu_kernel, scale=scale,
                               cap=cap, precision=precision)
    lo_B, hi_B = first_B // block_slots, last_B // block_slots
    args = (lo_B, hi_B, q_BxMxExH, k_BxMxHxS, v_BxMxSxH, mask_Bx1xS)
    if backend == "tpu":
        out_BxMxExH = _call_tpu(kernel, *args, block_slots, interpret)
    else:
        out_BxMxExH = _call_gpu(kernel, *args, block_slots, num_splits, interpret)
    return out_BxMxExH.reshape(B, 1, Q, H).astype(q_Bx1xQxH.dtype)


def _online_softmax_step(m_Ex1, l_Ex1, acc_ExH, s_ExK, v_KxH, precision):
    """Folds one block of masked scores (-inf where masked) and its values into the running max,
    sum and unnormalised output."""
    m_new_Ex1 = jnp.maximum(m_Ex1, s_ExK.max(axis=1, keepdims=True))
    m_safe_Ex1 = jnp.where(m_new_Ex1 == -jnp.inf, 0.0, m_new_Ex1)  # no valid slot seen yet
    p_ExK = jnp.exp(s_ExK - m_safe_Ex1)
    alpha_Ex1 = jnp.exp(m_Ex1 - m_safe_Ex1)
    l_Ex1 = alpha_Ex1 * l_Ex1 + p_ExK.sum(axis=1, keepdims=True)
    pv_ExH = jnp.dot(p_ExK.astype(v_KxH.dtype), v_KxH, precision=precision,
                     preferred_element_type=jnp.float32)
    return m_new_Ex1, l_Ex1, alpha_Ex1 * acc_ExH + pv_ExH


def _scores(q_ExH, k_HxK, mask_1xK, scale, cap, precision):
    """Soft-capped scores of one block, -inf where the int32 mask is 0."""
    s_ExK = jnp.dot(q_ExH, k_HxK, precision=precision, preferred_element_type=jnp.float32)
    valid_ExK = jnp.broadcast_to(mask_1xK, s_ExK.shape) != 0
    return jnp.where(valid_ExK, softcap(s_ExK * scale, cap), -jnp.inf)


def _tpu_kernel(lo_ref, hi_ref, q_ref, k_ref, v_ref, mask_ref, o_ref, m_ref, l_ref, acc_ref, *,
                scale, cap, precision):
    b, j = pl.program_id(0), pl.program_id(2)

    @pl.when(j == 0)
    def _init():
        m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, jnp.float32)
        l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    @pl.when((j >= lo_ref[b]) & (j <= hi_ref[b]))
    def _block():
        s_ExK = _scores(q_ref[...], k_ref[...], mask_ref[...], scale, cap, precision)
        m_ref[...], l_ref[...], acc_ref[...] = _online_softmax_step(
            m_ref[...], l_ref[...], acc_ref[...], s_ExK, v_ref[...], precision)

    @pl.when(j == pl.num_programs(2) - 1)
    def _finish():
        o_ref[...] = (acc_ref[...] / l_ref[...]).astype(o_ref.dtype)


def _call_tpu(kernel, lo_B, hi_B, q_BxMxExH, k_BxMxHxS, v_BxMxSxH, mask_Bx1xS, block_slots,
              interpret):
    B, M, E, H = q_BxMxExH.shape
    S = k_BxMxHxS.shape[3]

    def block(b, j, lo_ref, hi_ref):  # clamped into the row's valid blocks: no new copy outside
        return jnp.minimum(jnp.maximum(j, lo_ref[b]), hi_ref[b])

    heads = lambda b, m, j, lo_ref, hi_ref: (b, m, 0, 0)
    keys = lambda b, m, j, lo_ref, hi_ref: (b, m, 0, block(b, j, lo_ref, hi_ref))
    values = lambda b, m, j, lo_ref, hi_ref: (b, m, block(b, j, lo_ref, hi_ref), 0)
    mask = lambda b, m, j, lo_ref, hi_ref: (b, 0, block(b, j, lo_ref, hi_ref))
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=2,
        grid=(B, M, S // block_slots),
        in_specs=[pl.BlockSpec((None, None, E, H), heads),
                  pl.BlockSpec((None, None, H, block_slots), keys),
                  pl.BlockSpec((None, None, block_slots, H), values),
                  pl.BlockSpec((None, 1, block_slots), mask)],
        out_specs=pl.BlockSpec((None, None, E, H), heads),
        scratch_shapes=[pltpu.VMEM((E, 1), jnp.float32), pltpu.VMEM((E, 1), jnp.float32),
                        pltpu.VMEM((E, H), jnp.float32)])
    return pl.pallas_call(
        kernel, grid_spec=grid_spec,
        out_shape=jax.ShapeDtypeStruct(q_BxMxExH.shape, q_BxMxExH.dtype),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=interpret, name="decode_attention_tpu",
    )(lo_B, hi_B, q_BxMxExH, k_BxMxHxS, v_BxMxSxH, mask_Bx1xS)


def _gpu_kernel(lo_ref, hi_ref, q_ref, k_ref, v_ref, mask_ref, acc_ref, m_ref, l_ref, *, scale,
                cap, precision, block_slots, num_splits):
    H, S = k_ref.shape
    Ep, Hp = q_ref.shape
    lo, hi = lo_ref[()], hi_ref[()]
    per_split = pl.cdiv(hi - lo + 1, num_splits)
    start = lo + pl.program_id(2) * per_split
    stop = jnp.minimum(start + per_split, hi + 1)
    q_ExH = q_ref[...]
    in_h_H = jnp.arange(Hp) < H  # q's padding of H: not in the cache

    def body(j, carry):
        slots = pl.ds(j * block_slots, block_slots)
        in_s_K = j * block_slots + jnp.arange(block_slots) < S  # the last block may be ragged
        k_HxK = pltr.load(k_ref.at[pl.ds(0, Hp), slots], mask=in_h_H[:, None] & in_s_K[None],
                          other=0)
        v_KxH = pltr.load(v_ref.at[slots, pl.ds(0, Hp)], mask=in_s_K[:, None] & in_h_H[None],
                          other=0)
        mask_1xK = pltr.load(mask_ref.at[:, slots], mask=in_s_K[None], other=0)
        s_ExK = _scores(q_ExH, k_HxK, mask_1xK, scale, cap, precision)
        return _online_softmax_step(*carry, s_ExK, v_KxH, precision)

    init = (jnp.full((Ep, 1), -jnp.inf, jnp.float32), jnp.zeros((Ep, 1), jnp.float32),
            jnp.zeros((Ep, Hp), jnp.float32))
    m_Ex1, l_Ex1, acc_ExH = jax.lax.fori_loop(start, stop, body, init)
    acc_ref[...] = acc_ExH
    m_ref[...] = m_Ex1[:, 0]
    l_ref[...] = l_Ex1[:, 0]


def _call_gpu(kernel, lo_B, hi_B, q_BxMxExH, k_BxMxHxS, v_BxMxSxH, mask_Bx1xS, block_slots,
              num_splits, interpret):
    B, M, E, H = q_BxMxExH.shape
    S = k_BxMxHxS.shape[3]
    Ep, Hp = max(16, _next_power_of_2(E)), max(16, _next_power_of_2(H))
    q_BxMxEpxHp = jnp.pad(q_BxMxExH, ((0, 0), (0, 0), (0, Ep - E), (0, Hp - H)))
    P = num_splits
    acc_BxMxPxExH, m_BxMxPxE, l_BxMxPxE = pl.pallas_call(
        functools.partial(kernel, block_slots=block_slots, num_splits=P),
        grid=(B, M, P),
        in_specs=[
            pl.BlockSpec((None,), lambda b, m, p: (b,)),
            pl.BlockSpec((None,), lambda b, m, p: (b,)),
            pl.BlockSpec((None, None, Ep, Hp), lambda b, m, p: (b, m, 0, 0)),
            pl.BlockSpec((None, None, H, S), lambda b, m, p: (b, m, 0, 0)),
            pl.BlockSpec((None, None, S, H), lambda b, m, p: (b, m, 0, 0)),
            pl.BlockSpec((None, 1, S), lambda b, m, p: (b, 0, 0)),
        ],
        out_specs=[
            pl.BlockSpec((None, None, None, Ep, Hp), lambda b, m, p: (b, m, p, 0, 0)),
            pl.BlockSpec((None, None, None, Ep), lambda b, m, p: (b, m, p, 0)),
            pl.BlockSpec((None, None, None, Ep), lambda b, m, p: (b, m, p, 0)),
        ],
        out_shape=[jax.ShapeDtypeStruct((B, M, P, Ep, Hp), jnp.float32),
                   jax.ShapeDtypeStruct((B, M, P, Ep), jnp.float32),
                   jax.ShapeDtypeStruct((B, M, P, Ep), jnp.float32)],
        compiler_params=pltr.CompilerParams(num_warps=4, num_stages=2),
        interpret=interpret, name="decode_attention_gpu",
    )(lo_B, hi_B, q_BxMxEpxHp, k_BxMxHxS, v_BxMxSxH, mask_Bx1xS)
    # the splits' partial softmaxes combined (a split with no valid slot has m = -inf: weight 0)
    m_BxMxE = m_BxMxPxE.max(axis=2)
    w_BxMxPxE = jnp.exp(m_BxMxPxE - m_BxMxE[:, :, None])
    l_BxMxE = (w_BxMxPxE * l_BxMxPxE).sum(axis=2)
    acc_BxMxExH = (w_BxMxPxE[..., None] * acc_BxMxPxExH).sum(axis=2)
    return (acc_BxMxExH / l_BxMxE[..., None])[:, :, :E, :H]
