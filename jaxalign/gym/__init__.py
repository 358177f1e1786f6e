"""The alignment gym: synthetic tasks with known true rewards and preferences, a tiny reference
policy trained in about a minute, and the evaluation suite, so methods run on a CPU in minutes.

language.py  the seeded process (exact log-probs) and its word-level tokenizer
policy.py    the reference policy: SFT through the shared loop, cached by config hash
tasks.py     true rewards as jittable token functions (sentiment, helpfulness, harmlessness,
             arithmetic)
judges.py    CGPO constraint judges on `jaxalign.reward.Judge`
oracles.py   Bradley-Terry and intransitive (cyclic) preference oracles; preference JSONL
proxy.py     a learned reward model on few oracle labels: the reward-hacking target
evaluate.py  the suite: true reward, MC KL to the reference, win rate, violations, diversity
frontier.py  the DPO reward-vs-KL frontier (`python -m jaxalign --config
             experiments/dpo_frontier.py`)
genarm.py    GenARM's ARMs and guided decoding (`python -m jaxalign --config
             experiments/genarm_gym.py`)
"""

from jaxalign.gym.evaluate import EvalConfig, Suite, markdown_table
from jaxalign.gym.language import Language, LanguageConfig, tokenizer
from jaxalign.gym.oracles import BTOracle, CyclicOracle, pair_dataset, preference_rows
from jaxalign.gym.policy import Reference, ReferenceConfig, reference_policy
from jaxalign.gym.tasks import TASKS, Task

__all__ = [
    "BTOracle", "CyclicOracle", "EvalConfig", "Language", "LanguageConfig", "Reference",
    "ReferenceConfig", "Suite", "TASKS", "Task", "markdown_table", "pair_dataset",
    "preference_rows", "reference_policy", "tokenizer",
]
