"""The decoder-only language model and its KV cache.

    model = Transformer(cfg)
    params = init_params(cfg, jax.random.key(0))
    logits, cache, hidden = model.apply({"params": params}, tokens, positions, mask, cache)

`mask` marks real tokens (left padding is 0). Without a cache the call is a full forward over
T tokens; with one, the T tokens are written at `cache.index` and attend to everything cached
before them, so prefill and one-token decode steps are the same call. Layer parameters are always
stacked along a leading `layers` axis; `cfg.scan_layers` only chooses between `lax.scan` (fast
compiles for deep models) and a fully unrolled loop.

The decode layout (what the sampling loop uses): params with `split_layers` (one tree per layer)
and a per-layer cache (`init_cache(..., per_layer=True)`: one key and one value buffer per layer).
The call then runs the layers as a Python loop, each reading its own buffers. A decode step reads
every weight and the whole cache once, and XLA on CPU copies a slice of a stacked [L, ...] array
before a matmul can read it; from per-layer buffers nothing is copied. Same results either way.

Candidate scoring (ARGS-style search): with `candidates=True` the T tokens are alternatives for
the same next position, scored in one call without copying the cache, and the chosen one is
kept with `commit_candidate` (a per-row copy of its keys and values, no second forward):

    _, cache, hidden_BxAxD = model.apply(v, cand_BxA, pos_BxA, live_BxA, cache, candidates=True)
    cache = commit_candidate(cache, choice_B, live_B)  # == a normal step on the chosen tokens
"""

from __future__ import annotations

import functools

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.models.config import ModelConfig
from jaxalign.models.layers import DecoderLayer, make_norm, rope_sin_cos, softcap


@flax.struct.dataclass
class KVCache:
    """Keys slot-minor, values head-major, so that a one-token step's two attention products
    read each layer's cache as it lies (batch dims leading, no transposed copy):

      stacked:    k [L, B, M, H, S], v [L, B, M, S, H]
      per layer:  k, v tuples of L arrays [B, M, H, S] and [B, M, S, H] (the decode layout)

    (M KV heads of H dims, S slots: the README's glossary of dimension letters.)
    """

    k: jax.Array | tuple
    v: jax.Array | tuple
    mask: jax.Array  # [B, S] bool: the slot holds a real token
    index: jax.Array  # [] int32: the next slot to write

    @property
    def max_len(self) -> int:
        return self.mask.shape[1]

    @property
    def per_layer(self) -> bool:
        return isinstance(self.k, tuple)

    def map_rows(self, fn) -> "KVCache":
        """The cache with fn(array, batch_axis) applied to every buffer (mask included)."""
        axis = 0 if self.per_layer else 1
        kv = lambda x: jax.tree.map(lambda a: fn(a, axis), x)
        return self.replace(k=kv(self.k), v=kv(self.v), mask=fn(self.mask, 0))


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None,
               per_layer: bool = False) -> KVCache:
    """An empty cache of `max_len` slots; per_layer: the decode layout (see the module doc)."""
    M, H, L = cfg.num_kv_heads, cfg.dim_per_head, cfg.num_layers
    dtype = dtype or cfg.jnp_dtype
    if per_layer:
        k = tuple(jnp.zeros((batch, M, H, max_len), dtype) for _ in range(L))
        v = tuple(jnp.zeros((batch, M, max_len, H), dtype) for _ in range(L))
    else:
        k = jnp.zeros((L, batch, M, H, max_len), dtype)
        v = jnp.zeros((L, batch, M, max_len, H), dtype)
    # a NumPy index: made inside a jitted function (the sampler's prefill), it is known while
    # tracing, so the forward attends over the slots written so far only (`static_index`)
    return KVCache(k, v, jnp.zeros((batch, max_len), bool), np.zeros((), np.int32))


def static_index(index) -> int | None:
    """A cache's write index as an int when it is known while tracing (NumPy, or a concrete
    array outside `jit`), None when it is traced."""
    try:
        return int(index)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError):
        return None


def split_layers(params):
    """The decode layout of the params: the stacked `layers` subtree as a tuple of per-layer
    trees (see the module doc). Identity on params already split."""
    if isinstance(params["layers"], tuple):
        return params
    n = jax.tree.leaves(params["layers"])[0].shape[0]
    layers = tuple(jax.tree.map(lambda x, i=i: x[i], params["layers"]) for i in range(n))
    return {**params, "layers": layers}


def stack_layers(params):
    """Inverse of `split_layers` (identity on params already stacked)."""
    if not isinstance(params["layers"], tuple):
        return params
    return {**params, "layers": jax.tree.map(lambda *xs: jnp.stack(xs), *params["layers"])}


def positions_from_mask(mask_BxT):
    """Position ids for left-padded rows: 0 at each row's first real token (0 on padding)."""
    return jnp.maximum(jnp.cumsum(mask_BxT.astype(jnp.int32), axis=-1) - 1, 0)


_CFG = object()  # a mask's window: cfg.sliding_window unless given


def attention_mask(cfg: ModelConfig, q_slots_T, key_valid_BxS, window=_CFG):
    """[B, 1, T, S]: causal in slot order, valid keys only, within the sliding window
    (`window`, default `cfg.sliding_window`; None: no window; a model with `cfg.layer_types`
    needs a mask per window: `layer_masks`).

    Each query also sees its own slot, so a padding query never has an empty row (no NaN).
    Within a row real tokens occupy consecutive slots, so slot distance is position distance.
    """
    window = cfg.sliding_window if window is _CFG else window
    k_slots_S = jnp.arange(key_valid_BxS.shape[1])
    dist_TxS = q_slots_T[:, None] - k_slots_S[None, :]
    allowed_TxS = dist_TxS >= 0
    if window is not None:
        allowed_TxS &= dist_TxS < window
    mask = allowed_TxS[None] & key_valid_BxS[:, None, :]
    return (mask | (dist_TxS == 0)[None])[:, None]


def candidate_mask(cfg: ModelConfig, index, T: int, key_valid_BxS, window=_CFG):
    """[B, 1, T, S] for T alternatives at slot `index`, written at slots [index, index + T):

    candidate t sees the valid slots before `index` (within the sliding window `window`,
    default `cfg.sliding_window`, as a token at slot `index` would) and its own slot index + t,
    never the other candidates.
    """
    window = cfg.sliding_window if window is _CFG else window
    k_slots_S = jnp.arange(key_valid_BxS.shape[1])
    dist_S = index - k_slots_S
    before_S = dist_S > 0
    if window is not None:
        before_S &= dist_S < window
    own_TxS = k_slots_S[None, :] == (index + jnp.arange(T))[:, None]
    return ((before_S[None, None] & key_valid_BxS[:, None, :]) | own_TxS[None])[:, None]


def layer_masks(cfg: ModelConfig, make_mask):
    """The masks a forward needs, `make_mask(window)` -> [B, 1, T, S]: one for every layer
    (no `cfg.layer_types`), or the pair (global, sliding) that each layer picks from."""
    if cfg.layer_types is None:
        return make_mask(cfg.sliding_window)
    return make_mask(None), make_mask(cfg.sliding_window)


def commit_candidate(cache: KVCache, choice_B, valid_B) -> KVCache:
    """The cache after a `candidates=True` call, as if a normal 1-token step had run on each
    row's chosen candidate: its keys and values (slot index + choice_B) are copied to slot
    `index`, which becomes valid where valid_B, and index + 1. The other candidates' slots keep
    stale keys and values; they are invalid, and the next call overwrites them.

    choice_B: int [B] in [0, T); valid_B: bool [B] (False: a padding row, its slot masked).
    """
    slot_B = cache.index + choice_B.astype(jnp.int32)

    def move(x, slot_axis: int):  # the chosen slot's entry, per row, copied to slot `index`
        lead = 0 if cache.per_layer else 1  # the batch axis
        shape = [1] * x.ndim
        shape[lead] = slot_B.shape[0]
        chosen = jnp.take_along_axis(x, slot_B.reshape(shape), axis=slot_axis)
        start = [0] * x.ndim
        start[slot_axis] = cache.index
        return jax.lax.dynamic_update_slice(x, chosen, start)

    k_axis, v_axis = (3, 2) if cache.per_layer else (4, 3)
    mask_BxS = jax.lax.dynamic_update_slice(cache.mask, valid_B.astype(bool)[:, None],
                                            (0, cache.index))
    return KVCache(jax.tree.map(lambda x: move(x, k_axis), cache.k),
                   jax.tree.map(lambda x: move(x, v_axis), cache.v), mask_BxS, cache.index + 1)


class Transformer(nn.Module):
    cfg: ModelConfig

    def setup(self):
        cfg = self.cfg
        embed_init = nn.initializers.normal(cfg.initializer_range)
        self.embed = nn.Embed(
            cfg.vocab_size, cfg.hidden_size, dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype,
            embedding_init=nn.with_logical_partitioning(embed_init, ("vocab", "embed")))
        if cfg.is_gpt2:
            self.pos_embed = nn.Embed(
                cfg.max_position_embeddings, cfg.hidden_size, dtype=cfg.jnp_dtype,
                param_dtype=cfg.jnp_param_dtype,
                embedding_init=nn.with_logical_partitioning(embed_init, (None, "embed")))
        layer = DecoderLayer
        if cfg.remat != "none":
            policy = (jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims
                      if cfg.remat == "dots" else None)
            layer = nn.remat(layer, prevent_cse=not cfg.scan_layers, policy=policy)
        # sin_cos, mask, write_index broadcast; with layer types, each layer's is_sliding scanned
        in_axes = (nn.broadcast,) * 3 + ((0,) if cfg.layer_types is not None else ())
        self.layers = nn.scan(
            layer, variable_axes={"params": 0}, split_rngs={"params": True},
            in_axes=in_axes, length=cfg.num_layers,
            unroll=1 if cfg.scan_layers else cfg.num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(cfg, name="layers")
        self.final_norm = make_norm(cfg, "final_norm")
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Dense(
                cfg.vocab_size, use_bias=False, dtype=cfg.jnp_dtype,
                param_dtype=cfg.jnp_param_dtype,
                kernel_init=nn.with_logical_partitioning(embed_init, ("embed", "vocab")))

    def __call__(self, tokens_BxT, positions_BxT, mask_BxT, cache: KVCache | None = None,
                 return_logits: bool = True, candidates: bool = False):
        """Returns (logits [B,T,V] float32 or None, cache or None, final hidden [B,T,D]).

        candidates: (needs a cache with T free slots past its index) the T tokens are
          alternatives for the next position, each attending to the cache's valid slots and
          itself only (`candidate_mask`); give them the same position id. Their keys/values go
          to slots [index, index + T) but the returned cache's index and mask are the input's
          (`mask` is not written): `commit_candidate` keeps one.
        """
        cfg = self.cfg
        T = tokens_BxT.shape[1]
        mask_BxT = mask_BxT.astype(bool)
        x = self.embed(tokens_BxT)
        if cfg.scale_embeddings:  # Gemma: sqrt(D) rounded to the activation dtype, as HF does
            x = x * jnp.asarray(cfg.hidden_size ** 0.5, cfg.jnp_dtype)
        if cfg.is_gpt2:
            x = x + self.pos_embed(positions_BxT)
            sin_cos = None
        else:
            sin_cos = rope_sin_cos(cfg, positions_BxT)
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
        if candidates and cache is None:
            raise ValueError("Transformer(candidates=True) needs a cache")
        if cache is None:
            write_index, ck, cv = jnp.zeros((), jnp.int32), None, None
            key_valid = mask_BxT
        else:
            write_index, ck, cv = cache.index, cache.k, cache.v
            key_valid = jax.lax.dynamic_update_slice(cache.mask, mask_BxT, (0, write_index))
        if candidates:
            attn_mask = layer_masks(cfg, lambda w: candidate_mask(cfg, write_index, T,
                                                                  cache.mask, w))
        else:
            # a write index known while tracing (a fresh cache: the prefill) bounds the slots
            # any query sees: the mask covers slots [0, index + T) only, and attention reads
            # that much of the cache (see `Attention`)
            index = None if cache is None else static_index(write_index)
            seen = key_valid if index is None else key_valid[:, :index + T]
            attn_mask = layer_masks(cfg, lambda w: attention_mask(
                cfg, write_index + jnp.arange(T), seen, w))
        if cache is not None and cache.per_layer:
            x, ck, cv = self._per_layer(x, ck, cv, sin_cos, attn_mask, write_index)
        else:
            sliding = (() if cfg.layer_types is None else
                       (jnp.asarray([t == "sliding_attention" for t in cfg.layer_types]),))
            (x, ck, cv, _), _ = self.layers((x, ck, cv, jnp.zeros((), jnp.int32)), sin_cos,
                                             attn_mask, write_index, *sliding)
        hidden = self.final_norm(x)
        if candidates:
            new_cache = KVCache(ck, cv, cache.mask, cache.index)
        else:
            new_cache = None if cache is None else KVCache(ck, cv, key_valid, write_index + T)
        logits = self.logits(hidden) if return_logits else None
        return logits, new_cache, hidden

    def _per_layer(self, x, ck, cv, sin_cos, attn_mask, write_index):
        """The layers unrolled in Python, layer i on its own cache buffers ck[i], cv[i] and its
        params (split: `split_layers`; stacked ones are sliced, which costs a copy per call)."""
        layers = self.variables["params"]["layers"]
        if not isinstance(layers, tuple):
            layers = split_layers({"layers": layers})["layers"]
        ks, vs = [], []
        for i, (p, k, v) in enumerate(zip(layers, ck, cv, strict=True)):
            mask = attn_mask  # with layer types: (global, sliding), picked here per layer
            if self.cfg.layer_types is not None:
                mask = attn_mask[self.cfg.layer_types[i] == "sliding_attention"]
            (x, k, v, _), _ = DecoderLayer(self.cfg, parent=None).apply(
                {"params": p}, (x, k, v, None), sin_cos, mask, write_index)
            ks.append(k)
            vs.append(v)
        return x, tuple(ks), tuple(vs)

    def logits(self, hidden_BxTxD):
        """Float32 [B, T, V], soft-capped at `cfg.final_logit_softcap` (Gemma-2) if set: the
        same cap every place that forms logits from `unembedding` applies (`final_softcap`)."""
        if self.cfg.tie_word_embeddings:
            out = self.embed.attend(hidden_BxTxD)
        else:
            out = self.lm_head(hidden_BxTxD)
        return final_softcap(self.cfg, out.astype(jnp.float32))


def init_params(cfg: ModelConfig, rng: jax.Array):
    """Random parameters (plain arrays, no partitioning boxes)."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    boxed = Transformer(cfg).init(rng, tokens, tokens, jnp.ones((1, 1), bool))["params"]
    return nn.meta.unbox(boxed)


def param_logical_axes(cfg: ModelConfig):
    """Pytree matching the params: a tuple of logical axis names per leaf."""
    return jax.tree.map(lambda x: x, _param_logical_axes(cfg),  # a fresh tree of the cached
                        is_leaf=lambda x: isinstance(x, tuple))


@functools.lru_cache(maxsize=64)
def _param_logical_axes(cfg: ModelConfig):
    """One trace of `init` per config (it takes ~1 s for a 2-layer model)."""
    tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    boxed = jax.eval_shape(
        lambda t: Transformer(cfg).init(jax.random.key(0), t, t, jnp.ones((1, 1), bool)),
        tokens)["params"]
    return jax.tree.map(lambda b: tuple(b.names), boxed,
                        is_leaf=lambda b: isinstance(b, nn.Partitioned))


def param_shapes(cfg: ModelConfig):
    """Pytree of jax.ShapeDtypeStruct for the params, computed without allocating."""
    tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    return jax.eval_shape(lambda t: init_params(cfg, jax.random.key(0)), tokens)


def final_softcap(cfg: ModelConfig, logits):
    """`cap * tanh(logits / cap)` with cap `cfg.final_logit_softcap` (Gemma-2); identity without.
    Whoever forms logits from `unembedding` applies this too."""
    return softcap(logits, cfg.final_logit_softcap)


def unembedding(cfg: ModelConfig, params):
    """[D, V] matrix that maps final hidden states to logits (tied or untied head). The logits
    are `final_softcap(cfg, hidden @ unembedding)`: mind `cfg.final_logit_softcap`."""
    if cfg.tie_word_embeddings:
        return params["embed"]["embedding"].T
    return params["lm_head"]["kernel"]
