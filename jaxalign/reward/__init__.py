"""Reward models, preference models and judges (they use `models/` and `sampling/`; the
objectives (`jaxalign.objectives.bradley_terry` trains `model.py`) and loops above use them).

arm.py         GenARM's autoregressive reward model (a causal LM; token log-probs as rewards)
args.py        ARGS with the scalar reward model (`ArgsSampler`: a Sampler, a GenARM baseline)
model.py       the scalar reward model: decoder + `score` head at the last real token
hf.py          HF `*ForSequenceClassification` import/export (Llama, Mistral, Qwen2, GPT-2)
batched.py     a jitted forward over many sequences: length buckets, sharded over the mesh
scoring.py     RewardScorer (a grow step's score_fn) and ReST / CGPO normalisations
probe.py       next-token log-probs of designated tokens (the read-out of LLM judges)
preference.py  SPPO preference matrices: Bradley-Terry from scores, order-averaged pairwise judge
judges.py      the Judge interface, MixtureOfJudges, RegexAnswerJudge, LLMJudge (CGPO)
"""

from jaxalign.reward.args import ArgsSampler, ScalarRewardStep
from jaxalign.reward.arm import ARM, arm_rewards, arm_token_rewards
from jaxalign.reward.batched import BatchedForward
from jaxalign.reward.hf import load_reward_hf, save_reward_hf
from jaxalign.reward.judges import (Judge, JudgeError, LLMJudge, MixtureOfJudges,
                                    MixtureVerdicts, RegexAnswerJudge, Verdicts, check_verdicts)
from jaxalign.reward.model import (backbone_config, init_reward_params, last_token_index,
                                   reward_logical_axes, reward_param_shapes, reward_scores)
from jaxalign.reward.preference import (PairwiseJudge, ScorePreferenceModel,
                                        bt_preference_matrix, order_averaged)
from jaxalign.reward.probe import TokenProbe, next_token_logprobs
from jaxalign.reward.scoring import (RewardScorer, calibrated, make_score_fn, percentile_rank,
                                     sigmoid_scale)

__all__ = [
    "ARM", "ArgsSampler", "BatchedForward", "Judge", "JudgeError", "LLMJudge", "MixtureOfJudges",
    "MixtureVerdicts", "PairwiseJudge", "RegexAnswerJudge", "RewardScorer", "ScalarRewardStep",
    "ScorePreferenceModel", "TokenProbe", "Verdicts", "arm_rewards", "arm_token_rewards",
    "backbone_config", "bt_preference_matrix", "calibrated", "check_verdicts",
    "init_reward_params", "last_token_index", "load_reward_hf", "make_score_fn",
    "next_token_logprobs", "order_averaged", "percentile_rank", "reward_logical_axes",
    "reward_param_shapes", "reward_scores", "save_reward_hf", "sigmoid_scale",
]
