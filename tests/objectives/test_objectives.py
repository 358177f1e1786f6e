"""The objectives registry and the batch columns each objective declares and reads."""

import jax
import numpy as np
import pytest

from jaxalign.models import completion_logprobs, init_params
from jaxalign.objectives import (OBJECTIVES, bradley_terry_objective, check_columns,
                                 get_objective, preference_objective, sft_objective)
from jaxalign.reward import init_reward_params
from tests.train.batches import TINY, preference_batch

PARAMS = init_params(TINY, jax.random.key(0))
PAIR = ("chosen_tokens", "chosen_mask", "chosen_loss_mask", "rejected_tokens", "rejected_mask",
        "rejected_loss_mask")


def test_registry_names_and_unknown_name():
    assert {"preference": preference_objective, "sft": sft_objective,
            "bradley_terry": bradley_terry_objective}.items() <= OBJECTIVES.items()
    assert get_objective("sft") is sft_objective
    with pytest.raises(ValueError, match=r"Unknown objective 'dpo'; valid names: \[") as e:
        get_objective("dpo")
    assert all(repr(name) in str(e.value) for name in OBJECTIVES)


def test_declared_columns():
    on_the_fly = preference_objective(TINY, ref_params=PARAMS)
    assert on_the_fly.columns == PAIR + ("weight",) and on_the_fly.optional_columns == ()
    precomputed = preference_objective(TINY)
    assert precomputed.optional_columns == ("ref_chosen_logps", "ref_rejected_logps")
    assert sft_objective(TINY).columns == ("tokens", "mask", "loss_mask", "weight")
    bt = bradley_terry_objective(TINY)
    assert bt.columns == ("chosen_tokens", "chosen_mask", "rejected_tokens", "rejected_mask",
                          "weight") and bt.optional_columns == ("margin",)


def _only(batch, objective):
    keys = objective.columns + objective.optional_columns
    return {k: v for k, v in batch.items() if k in keys}


def test_each_objective_runs_on_its_columns_alone():
    """A key read but not declared would be a KeyError here."""
    batch = preference_batch(0)
    obj = preference_objective(TINY, loss_kwargs={"beta": 0.1}, ref_params=PARAMS)
    full, _, _ = obj(PARAMS, batch, None)
    np.testing.assert_array_equal(obj(PARAMS, _only(batch, obj), None)[0], full)
    ref = {f"ref_{side}_logps": completion_logprobs(
        TINY, PARAMS, batch[f"{side}_tokens"], batch[f"{side}_mask"],
        batch[f"{side}_loss_mask"]).sum for side in ("chosen", "rejected")}
    obj = preference_objective(TINY, loss_kwargs={"beta": 0.1})  # precomputed reference
    np.testing.assert_allclose(obj(PARAMS, _only({**batch, **ref}, obj), None)[0], full,
                               rtol=1e-6)
    sft = {"tokens": batch["chosen_tokens"], "mask": batch["chosen_mask"],
           "loss_mask": batch["chosen_loss_mask"], "weight": batch["weight"], "extra": 0}
    obj = sft_objective(TINY)
    obj(PARAMS, _only(sft, obj), None)
    cfg = TINY.replace(pad_token_id=0)
    obj = bradley_terry_objective(cfg)
    obj(init_reward_params(cfg, jax.random.key(1)), _only(batch, obj), None)


def test_check_columns_names_the_missing_keys_and_the_objective():
    batch = preference_batch(0)
    check_columns(preference_objective(TINY), batch, "train batches")
    with pytest.raises(ValueError, match=r"train batches: objective sft_objective reads columns "
                                         r"\['tokens', 'mask', 'loss_mask'\] that the batch lacks"):
        check_columns(sft_objective(TINY), batch, "train batches")
    with pytest.raises(TypeError, match="declares no columns"):
        check_columns(lambda p, b, r: None, batch, "train batches")
