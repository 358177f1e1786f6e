import jax
import numpy as np

from jaxalign.gym.policy import ReferenceConfig, pack
from jaxalign.models import Transformer, init_params, positions_from_mask
from jaxalign.objectives import sft_objective, token_weight


def test_sft_loss_is_token_cross_entropy_by_hand():
    cfg = ReferenceConfig(hidden_size=32, intermediate_size=64).model_config()
    params = init_params(cfg, jax.random.key(0))
    t, m, lm = pack([[1, 4, 26], [1, 5]], [[10, 2], [11, 12, 2]], length=8)
    batch = token_weight(dict(tokens=t, mask=m, loss_mask=lm))
    np.testing.assert_array_equal(batch["weight"], [2, 3])
    loss, w, _ = sft_objective(cfg)(params, batch, None)
    logits, _, _ = Transformer(cfg).apply({"params": params}, t, positions_from_mask(m), m)
    lp = jax.nn.log_softmax(np.asarray(logits, np.float64), -1)
    by_hand = [-(lp[0, 2, 10] + lp[0, 3, 2]) / 2, -(lp[1, 1, 11] + lp[1, 2, 12] + lp[1, 3, 2]) / 3]
    np.testing.assert_allclose(loss, by_hand, rtol=1e-5)
    np.testing.assert_array_equal(w, [2, 3])
