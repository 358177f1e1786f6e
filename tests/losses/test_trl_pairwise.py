"""TRL's other pairwise losses (`jaxalign.losses.pairwise`) against TRL's own computation.

TRL 1.16 has no standalone loss function: `DPOTrainer._compute_loss` reads the policy's
per-token log-probs from a model call, so a stub model returns fixed ones (the whole summed
log-prob on the first completion token) and a bare trainer object carries the settings the
method reads. One example per call, so TRL's batch mean is that example's loss.
"""

import collections
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from trl.trainer.dpo_trainer import DPOTrainer

from jaxalign.losses import get_loss, pairwise

# (name, TRL loss_type, our hyperparameters, the TRL settings they map to)
CASES = [
    ("dpo.nca_pair", "nca_pair", {}, {}),
    ("dpo.bco_pair", "bco_pair", {}, {}),
    ("dpo.exo_pair", "exo_pair", dict(label_smoothing=1e-3), dict(label_smoothing=1e-3)),
    ("dpo.exo_pair", "exo_pair", dict(label_smoothing=0.2), dict(label_smoothing=0.2)),
    ("dpo.apo_zero", "apo_zero", {}, {}),
    ("dpo.apo_down", "apo_down", {}, {}),
    ("dpo.sigmoid_norm", "sigmoid_norm", {}, {}),
    ("dpo.discopop", "discopop", dict(tau=0.05), dict(discopop_tau=0.05)),
    ("dpo.discopop", "discopop", dict(tau=0.5), dict(discopop_tau=0.5)),
]
IDS = [f"{c[1]}-{next(iter(c[2].values()), '')}".rstrip("-") for c in CASES]
BETAS = [0.1, 2.0]


def _fixed_set():
    """Log-ratios r_w, r_l with margins h = r_w - r_l from 0 to +-2e4, and lengths 1..64."""
    r = [(0.0, 0.0), (1e-3, -1e-3), (0.5, -0.25), (-0.5, 0.25), (3.0, 4.0), (-7.0, 2.0),
         (20.0, -30.0), (-45.0, 50.0), (300.0, -100.0), (-250.0, 400.0), (1e4, 0.0),
         (0.0, 1e4), (-1e4, 1e4), (1e4, -1e4), (5e3, 4e3), (-3e3, -2.5e3)]
    r_w, r_l = np.array(r, np.float32).T
    ref_w = -np.linspace(1.0, 40.0, len(r)).astype(np.float32)
    ref_l = -np.linspace(30.0, 2.0, len(r)).astype(np.float32)
    return dict(policy_chosen_logps=ref_w + r_w, policy_rejected_logps=ref_l + r_l,
                ref_chosen_logps=ref_w, ref_rejected_logps=ref_l,
                chosen_lengths=np.array([1, 2, 3, 5, 8, 13, 21, 34, 64, 1, 7, 9, 4, 6, 10, 2],
                                        np.int32),
                rejected_lengths=np.array([1, 3, 2, 8, 5, 21, 13, 64, 34, 9, 1, 4, 7, 2, 6, 10],
                                          np.int32))


BATCH = _fixed_set()


class _StubModel:
    """Returns the fixed per-token log-probs (and the zero metrics TRL reads)."""
    training = False

    def __init__(self, token_logps):
        self.token_logps = token_logps

    def __call__(self, **_):
        shape = self.token_logps.shape
        return types.SimpleNamespace(log_probs=self.token_logps, entropy=torch.zeros(shape),
                                     mean_logits=torch.zeros(shape),
                                     is_top1=torch.zeros(shape, dtype=torch.bool))


def trl_values(loss_type, beta, batch, dtype=torch.float32, **settings):
    """TRL's loss and logged rewards, example by example, from `DPOTrainer._compute_loss`."""
    out = collections.defaultdict(list)
    for i in range(len(batch["policy_chosen_logps"])):
        n_w, n_l = int(batch["chosen_lengths"][i]), int(batch["rejected_lengths"][i])
        t = max(n_w, n_l) + 1  # one prompt token, then the completion
        token_logps = torch.zeros(2, t - 1, dtype=dtype)  # shifted: [chosen; rejected]
        token_logps[0, 0] = float(batch["policy_chosen_logps"][i])
        token_logps[1, 0] = float(batch["policy_rejected_logps"][i])
        completion_mask = torch.zeros(2, t, dtype=torch.long)
        completion_mask[0, 1:1 + n_w] = 1
        completion_mask[1, 1:1 + n_l] = 1
        trainer = object.__new__(DPOTrainer)
        model = _StubModel(token_logps)
        vars(trainer).update(
            model=model, ref_model=None, beta=beta, loss_types=[loss_type], loss_weights=[1.0],
            label_smoothing=settings.get("label_smoothing", 0.0), use_weighting=False,
            args=types.SimpleNamespace(discopop_tau=settings.get("discopop_tau", 0.05)),
            ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
            aux_loss_enabled=False, _total_train_tokens=0,
            _metrics=collections.defaultdict(lambda: collections.defaultdict(list)),
            accelerator=types.SimpleNamespace(device=torch.device("cpu"),
                                              gather=lambda x: x,
                                              gather_for_metrics=lambda x: x))
        inputs = dict(
            input_ids=torch.zeros(2, t, dtype=torch.long),
            attention_mask=torch.ones(2, t, dtype=torch.long), completion_mask=completion_mask,
            ref_chosen_logps=torch.tensor([float(batch["ref_chosen_logps"][i])], dtype=dtype),
            ref_rejected_logps=torch.tensor([float(batch["ref_rejected_logps"][i])],
                                            dtype=dtype))
        out["loss"].append(trainer._compute_loss(model, inputs, return_outputs=False).item())
        for ours, theirs in [("chosen_reward", "rewards/chosen"),
                             ("rejected_reward", "rewards/rejected")]:
            out[ours].append(trainer._metrics["eval"][theirs][-1])
    return {k: np.array(v) for k, v in out.items()}


def _margins(beta):
    """z = beta h in float32, as both implementations compute it."""
    r_w = BATCH["policy_chosen_logps"] - BATCH["ref_chosen_logps"]
    r_l = BATCH["policy_rejected_logps"] - BATCH["ref_rejected_logps"]
    return np.float32(beta) * (r_w - r_l)


@pytest.mark.parametrize("beta", BETAS, ids=lambda b: f"beta{b}")
@pytest.mark.parametrize("name,loss_type,hparams,settings", CASES, ids=IDS)
def test_matches_trl(name, loss_type, hparams, settings, beta):
    loss, metrics = get_loss(name)(**BATCH, beta=beta, **hparams)
    trl = trl_values(loss_type, beta, BATCH, **settings)
    assert loss.dtype == jnp.float32 and loss.shape == (16,)
    assert np.isfinite(loss).all()
    finite = np.isfinite(trl["loss"])
    # TRL's value is finite everywhere except DiscoPOP's exp(-z) * sigmoid(z/tau) = inf * 0
    # where exp(-z) overflows float32 (z < -88.7): see test_discopop_where_trl_overflows.
    expected_finite = _margins(beta) > -88.7 if loss_type == "discopop" else True
    np.testing.assert_array_equal(finite, expected_finite)
    np.testing.assert_allclose(np.asarray(loss)[finite], trl["loss"][finite],
                               rtol=1e-5, atol=1e-6)
    if loss_type != "sigmoid_norm":  # which reports the length-normalised rewards it compares
        for k in ("chosen_reward", "rejected_reward"):
            np.testing.assert_allclose(metrics[k], trl[k], rtol=1e-6, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("tau", [0.05, 0.5])
def test_discopop_where_trl_overflows(tau):
    """Where TRL's float32 value is nan: TRL in float64 while finite, then the -z asymptote."""
    beta = 2.0
    z = _margins(beta)
    fn = lambda pc: get_loss("dpo.discopop")(**{**BATCH, "policy_chosen_logps": pc},
                                             beta=beta, tau=tau)[0].sum()
    value, grad = jax.value_and_grad(fn)(BATCH["policy_chosen_logps"])
    loss = np.asarray(pairwise.discopop(**BATCH, beta=beta, tau=tau)[0])
    assert np.isfinite(value) and np.isfinite(grad).all()
    trl64 = trl_values("discopop", beta, BATCH, dtype=torch.float64, discopop_tau=tau)["loss"]
    overflow32, overflow64 = z < -88.7, z < -709.8
    assert overflow32.sum() > overflow64.sum() > 0  # the fixed set reaches both regions
    np.testing.assert_array_equal(np.isfinite(trl64), ~overflow64)
    between = overflow32 & ~overflow64
    np.testing.assert_allclose(loss[between], trl64[between], rtol=1e-5)
    # sigma(-z/tau) -> 1 and the exp term -> 0: the loss is softplus(-z) = -z to float32.
    np.testing.assert_allclose(loss[overflow64], -z[overflow64], rtol=1e-6)


def sp(x):
    """softplus by hand: log(1 + e^x) = -log sigma(-x)."""
    return math.log1p(math.exp(x))


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


# One pair: r_w = 1, r_l = -1, beta = 0.5, so u_w = 0.5, u_l = -0.5, z = 1; |y_w| = 2, |y_l| = 4.
ONE = dict(policy_chosen_logps=np.array([-2.0], np.float32),
           policy_rejected_logps=np.array([-6.0], np.float32),
           ref_chosen_logps=np.array([-3.0], np.float32),
           ref_rejected_logps=np.array([-5.0], np.float32),
           chosen_lengths=np.array([2], np.int32), rejected_lengths=np.array([4], np.int32))
BY_HAND = [
    ("dpo.nca_pair", {}, sp(-0.5) + 0.5 * sp(0.5) + 0.5 * sp(-0.5)),
    ("dpo.bco_pair", {}, 2 * sp(-0.5)),
    ("dpo.bco_pair", dict(delta=0.25), sp(0.25 - 0.5) + sp(-0.5 - 0.25)),
    ("dpo.exo_pair", dict(label_smoothing=0.1),
     sig(1) * (math.log(sig(1)) - math.log(0.9)) + sig(-1) * (math.log(sig(-1)) - math.log(0.1))),
    ("dpo.apo_zero", {}, (1 - sig(0.5)) + sig(-0.5)),
    ("dpo.apo_down", {}, sig(0.5) + (1 - sig(1.0))),
    # r_w/|y_w| - r_l/|y_l| = 1/2 + 1/4 = 3/4; beta * 3/4 = 0.375
    ("dpo.sigmoid_norm", {}, sp(-0.375)),
    ("dpo.discopop", dict(tau=0.5), (1 - sig(2.0)) * sp(-1.0) + sig(2.0) * math.exp(-1.0)),
]


@pytest.mark.parametrize("name,hparams,expected", BY_HAND,
                         ids=[f"{n}{'-' + next(iter(h)) if h else ''}" for n, h, _ in BY_HAND])
def test_by_hand(name, hparams, expected):
    loss, metrics = get_loss(name)(**ONE, beta=0.5, **hparams)
    np.testing.assert_allclose(loss, [expected], rtol=1e-6)
    reward = (0.25, -0.125) if name == "dpo.sigmoid_norm" else (0.5, -0.5)
    np.testing.assert_allclose([metrics["chosen_reward"][0], metrics["rejected_reward"][0]],
                               reward, rtol=1e-6)


def test_bco_delta_is_held_fixed():
    """The reward shift enters the loss but no gradient flows into it (TRL detaches it)."""
    f = lambda delta: pairwise.bco_pair(**ONE, beta=0.5, delta=delta)[0].sum()
    assert float(jax.grad(f)(jnp.float32(0.3))) == 0.0
    assert float(f(0.3)) != float(f(0.0))


@pytest.mark.parametrize("name,kwargs,match", [
    ("dpo.exo_pair", dict(label_smoothing=0.0), r"label_smoothing \(EXO's eps\)"),
    ("dpo.exo_pair", dict(label_smoothing=0.5), r"label_smoothing \(EXO's eps\)"),
    ("dpo.discopop", dict(tau=0.0), "tau must be > 0"),
    ("dpo.apo_zero", dict(beta=-1.0), "beta must be > 0"),
    ("dpo.sigmoid_norm", dict(chosen_lengths=None),
     "dpo.sigmoid_norm needs chosen_lengths"),
    ("dpo.nca_pair", dict(ref_rejected_logps=np.zeros(3, np.float32)), "Shapes must match"),
], ids=["exo-eps0", "exo-eps-half", "discopop-tau0", "apo-beta", "norm-lengths", "nca-shape"])
def test_bad_arguments(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_loss(name)(**{**ONE, "beta": 0.5, **kwargs})
