"""GenARM's autoregressive reward model (ARM; Xu et al. 2024, arXiv 2410.08193).

    arm = ARM(cfg)                       # a causal LM of any supported family (llama, gpt2, ...)
    r_BxT = arm.apply({"params": p}, tokens_BxT, mask_BxT, completion_mask_BxT,
                      method=ARM.token_rewards)        # log pi_r(y_t | x, y_<t), 0 off-completion
    r_B = arm_rewards(cfg, p, tokens_BxT, mask_BxT, completion_mask_BxT)   # r(x, y), summed

The ARM is a plain causal LM: its params are a `Transformer`'s, so `load_hf` of the SFT model
initialises it, `save_hf` exports it, LoRA (`jaxalign.train.lora`) adapts it, and the sampler
runs it as a guide with its own KV cache. Its reward is `r(x, y) = sum_t log pi_r(y_t | x, y_<t)`
(summed over the completion, no reference model, no length normalisation).

Training is the preference objective of `jaxalign.objectives` with the `genarm.arm` loss of the
loss library, `-log sigma(beta_r (r(x, y_w) - r(x, y_l)) - gamma)`:

    objective = preference_objective(cfg, loss="genarm.arm", loss_kwargs={"beta": beta_r})

(`python -m jaxalign --config experiments/genarm_hh_rlhf.py` at paper scale), whose summed
log-probs are exactly `arm_rewards` (a test checks it; both come from `jaxalign.models.logprobs`).
Guided decoding samples from `pi_base * pi_r^alpha` per token, alpha = 1 / beta_r by default:

    Sampler(base_cfg, base_params, tok, guides=[GuideModel(cfg, arm_params, weight=1 / beta_r)])
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from jaxalign.models import ModelConfig, Transformer, completion_token_logprobs


class ARM(Transformer):
    """A `Transformer` (same params, same HF mapping) read as a token-level reward model."""

    def token_rewards(self, tokens_BxT: Int[Array, "B T"], mask_BxT: Bool[Array, "B T"],
                      completion_mask_BxT: Bool[Array, "B T"]) -> Float[Array, "B T"]:
        """float32 [B, T]: at t, log pi_r(tokens[t] | tokens[<t]) where `completion_mask[t]`
        (a completion token with a real token before it), else 0. Padding may be on either side.
        """
        mask_BxT = mask_BxT.astype(bool)
        # the shared forward of every completion log-prob, on this module's own params
        token_lp, tmask = completion_token_logprobs(
            self.cfg, self.variables["params"], tokens_BxT, mask_BxT,
            completion_mask_BxT.astype(bool) & mask_BxT)
        # token_lp[:, t] scores tokens[:, t + 1]: put each reward on the token it scores
        r_BxT = jnp.pad(token_lp, ((0, 0), (1, 0)))
        return jnp.where(jnp.pad(tmask, ((0, 0), (1, 0))), r_BxT, 0.0)


def arm_token_rewards(cfg: ModelConfig, params, tokens_BxT, mask_BxT, completion_mask_BxT):
    """`ARM.token_rewards` as a function of (cfg, params): float32 [B, T]."""
    return ARM(cfg).apply({"params": params}, tokens_BxT, mask_BxT, completion_mask_BxT,
                          method=ARM.token_rewards)


def arm_rewards(cfg: ModelConfig, params, tokens_BxT, mask_BxT,
                completion_mask_BxT) -> Float[Array, "B"]:
    """GenARM's r(x, y) = sum_t log pi_r(y_t | x, y_<t) over the completion, float32 [B]."""
    return arm_token_rewards(cfg, params, tokens_BxT, mask_BxT, completion_mask_BxT).sum(-1)
