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
judges.py      the Judge interface, MixtureOfJudges, RegexAnswerJudge, LLMJudge and CGPO's
               LLM judges (false refusal, factuality, safety)
math_judge.py  CGPO's math judge: math-verify in a worker subprocess, a deadline per response
code_judge.py  CodeJudge: a response's code run against unit tests in a namespace sandbox
               (run_sandboxed)
instructions.py  IFEval-style verifiable instructions (24 types) and InstructionJudge (CGPO)
"""

from jaxalign.reward.args import ArgsSampler, ScalarRewardStep
from jaxalign.reward.arm import ARM, arm_rewards, arm_token_rewards
from jaxalign.reward.batched import BatchedForward
from jaxalign.reward.hf import load_reward_hf, save_reward_hf
from jaxalign.reward.code_judge import (CodeJudge, SandboxError, SandboxResult,
                                        SandboxUnavailable, extract_code, run_sandboxed)
from jaxalign.reward.instructions import (INSTRUCTIONS, InstructionError, InstructionJudge,
                                          check_kwargs, follows)
from jaxalign.reward.judges import (FACTUALITY_TEMPLATE, FALSE_REFUSAL_TEMPLATE,
                                    SAFETY_TEMPLATE, Judge, JudgeError, LLMJudge,
                                    MixtureOfJudges, MixtureVerdicts, RegexAnswerJudge, Verdicts,
                                    check_verdicts, factuality_judge, false_refusal_judge,
                                    safety_judge)
from jaxalign.reward.math_judge import MathAnswerJudge
from jaxalign.reward.model import (backbone_config, init_reward_params, last_token_index,
                                   reward_logical_axes, reward_param_shapes, reward_scores)
from jaxalign.reward.preference import (PairwiseJudge, ScorePreferenceModel,
                                        bt_preference_matrix, order_averaged)
from jaxalign.reward.probe import TokenProbe, next_token_logprobs
from jaxalign.reward.scoring import (RewardScorer, calibrated, make_score_fn, percentile_rank,
                                     sigmoid_scale)

__all__ = [
    "CodeJudge", "FACTUALITY_TEMPLATE", "FALSE_REFUSAL_TEMPLATE", "INSTRUCTIONS",
    "InstructionError", "InstructionJudge", "MathAnswerJudge", "SAFETY_TEMPLATE",
    "SandboxError", "SandboxResult", "SandboxUnavailable", "check_kwargs", "extract_code",
    "factuality_judge", "false_refusal_judge", "follows", "run_sandboxed", "safety_judge",
    "ARM", "ArgsSampler", "BatchedForward", "Judge", "JudgeError", "LLMJudge", "MixtureOfJudges",
    "MixtureVerdicts", "PairwiseJudge", "RegexAnswerJudge", "RewardScorer", "ScalarRewardStep",
    "ScorePreferenceModel", "TokenProbe", "Verdicts", "arm_rewards", "arm_token_rewards",
    "backbone_config", "bt_preference_matrix", "calibrated", "check_verdicts",
    "init_reward_params", "last_token_index", "load_reward_hf", "make_score_fn",
    "next_token_logprobs", "order_averaged", "percentile_rank", "reward_logical_axes",
    "reward_param_shapes", "reward_scores", "save_reward_hf", "sigmoid_scale",
]
