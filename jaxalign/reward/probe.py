"""Next-token probabilities of a few designated tokens after a prompt: the read-out of LLM judges.

    probe = TokenProbe(cfg, params, tokenizer, tokens=(" Yes", " No"), mesh=mesh)
    logp_NxA = probe(texts)    # log p(token_a | text) at the position right after each text

No sampling: one forward pass per text (batched, bucketed, jitted), the final hidden state of
the text's last token times the unembedding gives the full next-token distribution, of which
the designated tokens' log-probabilities are returned (float32). Texts are tokenised as prompts
by `jaxalign.data.Encoder` (chat template with the generation prompt when `chat`, else plain
text with BOS), so the position probed is where the model's answer would start.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int
import numpy as np

from jaxalign.data import Encoder, bucket_lengths
from jaxalign.data.tokenize import cut_prompt
from jaxalign.models import (Transformer, final_softcap, param_logical_axes,
                             positions_from_mask, unembedding)
from jaxalign.reward.batched import BatchedForward
from jaxalign.reward.model import last_token_index


def next_token_logprobs(cfg, params, tokens_BxT: Int[Array, "B T"], mask_BxT: Bool[Array, "B T"],
                        token_ids_K: Int[Array, "K"]) -> Float[Array, "B K"]:
    """log p(token_ids[k] | row) at the position after each row's last real token, float32."""
    mask_BxT = mask_BxT.astype(bool)
    _, _, hidden_BxTxD = Transformer(cfg).apply(
        {"params": params}, tokens_BxT, positions_from_mask(mask_BxT), mask_BxT,
        return_logits=False)
    last_B = last_token_index(mask_BxT)
    h_BxD = jnp.take_along_axis(hidden_BxTxD, last_B[:, None, None], axis=1)[:, 0]
    logits_BxV = jnp.einsum("bd,dv->bv", h_BxD, unembedding(cfg, params),
                            preferred_element_type=jnp.float32).astype(jnp.float32)
    logits_BxV = final_softcap(cfg, logits_BxV)  # Gemma-2's, as the model's own logits
    logp_BxV = jax.nn.log_softmax(logits_BxV, axis=-1)
    return jnp.take(logp_BxV, jnp.asarray(token_ids_K), axis=-1)


def token_id(tokenizer: Any, token: int | str) -> int:
    """The id of a designated token: an int as is, a string that must encode to one token."""
    if isinstance(token, (int, np.integer)):
        return int(token)
    ids = tokenizer(token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
        raise ValueError(f"designated token {token!r} encodes to {ids}, not to one known token; "
                         "pick another string (mind the leading space) or give the id")
    return ids[0]


class TokenProbe:
    """`probe(texts) -> np.ndarray float32 [N, A]`: log-probs of the A designated next tokens.

    A text longer than `max_length` tokens keeps its BOS and its last tokens (keep_end), so
    the question a judge prompt ends with survives.
    """

    def __init__(self, cfg, params, tokenizer: Any, tokens: Sequence[int | str], *, mesh=None,
                 batch_size: int = 32, max_length: int = 1024, chat: bool | None = None,
                 min_bucket: int = 64):
        self.cfg = cfg
        self.encoder = tokenizer if isinstance(tokenizer, Encoder) else Encoder(tokenizer,
                                                                                 chat=chat)
        self.token_ids = tuple(token_id(self.encoder.tokenizer, t) for t in tokens)
        bad = [t for t in self.token_ids if not 0 <= t < cfg.vocab_size]
        if bad:
            raise ValueError(f"designated token ids {bad} are outside the vocabulary "
                             f"({cfg.vocab_size})")
        self.max_length = max_length
        ids = jnp.asarray(self.token_ids, jnp.int32)
        self.forward = BatchedForward(
            lambda p, t, m: next_token_logprobs(cfg, p, t, m, ids), params,
            pad_id=self.encoder.pad_id,
            buckets=bucket_lengths(max_length, min_length=min(min_bucket, max_length)),
            batch_size=batch_size, mesh=mesh, logical_axes=param_logical_axes(cfg))

    def encode(self, text, loc: str = "?") -> list[int]:
        ids = self.encoder.encode_prompt(text, loc)
        return cut_prompt(ids, self.max_length, "keep_end", self.encoder.bos_id)

    def __call__(self, texts: Sequence) -> np.ndarray:
        return self.forward([self.encode(t, f"text {i}") for i, t in enumerate(texts)])
