"""A tiny random Llama on the toy word tokenizer, and a direct (unbatched) next-token read-out."""

import jax
import numpy as np

from jaxalign.data import Encoder, toy
from jaxalign.models import Transformer, init_params
from jaxalign.models.presets import preset

CFG = preset("bench-tiny").replace(vocab_size=64, initializer_range=0.3, pad_token_id=0)
PARAMS = init_params(CFG, jax.random.key(7))
TOKENIZER = toy.word_tokenizer()
_apply = jax.jit(Transformer(CFG).apply)


def next_token_logprobs_direct(text: str, token_ids) -> np.ndarray:
    """log p(token | text) for each designated id: one unpadded full forward, softmax over V."""
    ids = np.array(Encoder(TOKENIZER).encode_prompt(text), np.int32)[None]
    logits, _, _ = _apply({"params": PARAMS}, ids, np.arange(ids.shape[1])[None],
                          np.ones_like(ids, bool))
    logits = np.asarray(logits[0, -1], np.float64)
    logp = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
    return logp[list(token_ids)]
