"""GenARM's autoregressive reward model: token rewards by hand, padding, the training objective."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.models import Transformer, init_params, param_shapes
from jaxalign.models.hf import load_hf, save_hf
from jaxalign.models.presets import preset
from jaxalign.objectives import preference_objective
from jaxalign.reward.arm import ARM, arm_rewards, arm_token_rewards

CFG = preset("bench-tiny").replace(vocab_size=32, initializer_range=0.3)
PARAMS = init_params(CFG, jax.random.key(3))
_apply = jax.jit(Transformer(CFG).apply)


def _rows():
    """Two (prompt, completion) rows of different lengths, as token lists."""
    return [([1, 5, 9], [4, 7, 2]), ([1, 3], [8, 8, 6, 2])]


def _pack(rows, T: int = 8, left: bool = True):
    tokens, mask, comp = (np.zeros((len(rows), T), np.int32), np.zeros((len(rows), T), bool),
                          np.zeros((len(rows), T), bool))
    for b, (p, c) in enumerate(rows):
        seq = p + c
        start = T - len(seq) if left else 0
        tokens[b, start:start + len(seq)] = seq
        mask[b, start:start + len(seq)] = True
        comp[b, start + len(p):start + len(seq)] = True
    return tokens, mask, comp


def _by_hand(params, rows):
    """For each row, [log pi(c_t | p, c_<t)] from one unpadded forward per row (float64)."""
    out = []
    for p, c in rows:
        seq = np.array([p + c], np.int32)
        logits, _, _ = _apply({"params": params}, seq, np.arange(seq.shape[1])[None],
                              np.ones_like(seq, bool))
        z = np.asarray(logits[0], np.float64)
        lp = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - z.max(-1, keepdims=True)
        out.append([lp[len(p) - 1 + t, tok] for t, tok in enumerate(c)])
    return out


@pytest.mark.parametrize("left", [True, False])
def test_token_rewards_are_next_token_logprobs_on_the_token_they_score(left):
    tokens, mask, comp = _pack(_rows(), left=left)
    r = np.asarray(arm_token_rewards(CFG, PARAMS, tokens, mask, comp))
    for b, want in enumerate(_by_hand(PARAMS, _rows())):
        np.testing.assert_allclose(r[b][comp[b]], want, atol=2e-5)
        assert (r[b][~comp[b]] == 0).all()
    np.testing.assert_allclose(np.asarray(arm_rewards(CFG, PARAMS, tokens, mask, comp)),
                               [sum(w) for w in _by_hand(PARAMS, _rows())], atol=5e-5)


def test_arm_is_a_transformer_with_the_same_params_and_hf_mapping(tmp_path):
    tokens = jnp.zeros((1, 1), jnp.int32)
    boxed = ARM(CFG).init(jax.random.key(0), tokens, tokens, jnp.ones((1, 1), bool))["params"]
    shape = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)  # noqa: E731
    assert shape(nn.meta.unbox(boxed)) == shape(param_shapes(CFG))
    save_hf(str(tmp_path), CFG, PARAMS)  # an SFT checkpoint initialises the ARM
    cfg, loaded = load_hf(str(tmp_path))
    tokens, mask, comp = _pack(_rows())
    np.testing.assert_array_equal(np.asarray(arm_rewards(cfg, loaded, tokens, mask, comp)),
                                  np.asarray(arm_rewards(CFG, PARAMS, tokens, mask, comp)))


def test_training_objective_is_genarm_loss_of_arm_rewards():
    """preference_objective(loss="genarm.arm") = -log sigma(beta_r (r(y_w) - r(y_l)) - gamma)."""
    rows_w = _rows()
    rows_l = [(p, c[::-1]) for p, c in rows_w]
    cw, mw, lw = _pack(rows_w)
    cl, ml, ll = _pack(rows_l)
    batch = dict(chosen_tokens=cw, chosen_mask=mw, chosen_loss_mask=lw, rejected_tokens=cl,
                 rejected_mask=ml, rejected_loss_mask=ll, weight=np.ones(2, np.float32))
    beta, gamma = 0.05, 0.3
    objective = preference_objective(CFG, loss="genarm.arm",
                                     loss_kwargs={"beta": beta, "gamma": gamma})
    loss, weight, metrics = objective(PARAMS, batch, None)
    r_w = np.asarray(arm_rewards(CFG, PARAMS, cw, mw, lw))
    r_l = np.asarray(arm_rewards(CFG, PARAMS, cl, ml, ll))
    z = beta * (np.asarray(r_w, np.float64) - r_l) - gamma
    np.testing.assert_allclose(np.asarray(loss), np.log1p(np.exp(-z)), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(weight), [1, 1])


def test_paper_arm_configs_validate_abstractly():
    """HH-RLHF: LoRA r=8 on q/k/v of a 7B Llama; UltraFeedback: full fine-tune, vocab 32001."""
    from experiments import genarm_hh_rlhf, genarm_ultrafeedback
    from jaxalign.algorithms import run_dpo

    hh = run_dpo.dry_run(genarm_hh_rlhf.get_config())
    L, D, KV = 32, 4096, 4096  # Llama-7B: q, k and v are D x D
    assert hh["trainable"] == L * 3 * 8 * (D + KV)  # a [D, 8] and b [8, D] per projection
    assert hh["estimates"]["v5e-8"].reference == 0  # the ARM's reward has no reference
    uf = run_dpo.dry_run(genarm_ultrafeedback.get_config())
    assert uf["lora"] is None and uf["model"].vocab_size == 32001
    assert uf["trainable"] == 6_738_415_616 + 2 * 4096  # Llama-2-7B plus one embedding row each
    for report in (hh, uf):
        assert {"loss", "reward_accuracy"} <= set(report["metrics"])
        assert all(e.total < 95 * 2**30 for e in report["estimates"].values())
