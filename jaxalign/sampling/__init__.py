"""Sampling: the compiled decode loop, its decode strategies, and the host-side Sampler.

Decoding-time alignment methods (all run by one `Sampler`, one compiled loop):
  plain decoding   strategies.Plain        the policy's logits, any selection rule
  GenARM           strategies.Guided       autoregressive reward models fused into each step:
                                           Sampler(guides=[GuideModel(...)]), guide_weights=alphas
  ARGS             strategies.TopKReward   a reward model scores the policy's top-k tokens per
                                           step: Sampler(reward=RewardGuide(...)), k=, w=
                                           (jaxalign.reward.ArgsSampler: the scalar reward model)
  best-of-N        best_of_n.py            n completions per prompt, the best by a score function

selection.py   token selection as pure functions of logits (greedy, temperature, top-k/p, min-p,
               GenARM's guided logits)
strategies.py  decode strategies: what a step computes from the models and their caches, and
               how the chosen token is committed (plain, GenARM, ARGS)
loop.py        the jitted prefill + while_loop of one-token steps (State, Settings, `record`)
prompts.py     host-side bucketed, left-padded prompt batches
sampler.py     `Sampler`: text or token ids in, completions and log-probs out, on a mesh
output.py      `SampleOutput`: the numpy arrays (and texts) a Sampler returns
best_of_n.py   best-of-N selection of a Sampler's completions by a score function
answers.py     AlpacaEval and MT-Bench answer files from a Sampler (python -m
               jaxalign.sampling.answers {alpaca_eval,mt_bench} ...)
"""

from jaxalign.sampling.best_of_n import BestOfN, best_of_n
from jaxalign.sampling.loop import LM, Settings, State, decode, prefill
from jaxalign.sampling.output import SampleOutput
from jaxalign.sampling.sampler import (GuideModel, RewardGuide, Sampler, completion_text,
                                       stop_ids_from_checkpoint)
from jaxalign.sampling.strategies import Guided, Plain, RewardStep, TopKReward
from jaxalign.sampling.selection import GUIDE_CONVENTIONS, Rule, choose, guided_logits

__all__ = [
    "BestOfN", "best_of_n", "GUIDE_CONVENTIONS", "Guided", "LM", "GuideModel", "Plain",
    "RewardGuide", "RewardStep", "Rule", "SampleOutput", "Sampler", "Settings", "State",
    "TopKReward", "choose", "completion_text", "decode", "guided_logits", "load_alpaca_eval",
    "load_mt_bench", "prefill", "stop_ids_from_checkpoint", "write_alpaca_eval",
    "write_mt_bench",
]
_ANSWERS = ("load_alpaca_eval", "load_mt_bench", "write_alpaca_eval", "write_mt_bench")


def __getattr__(name):
    """answers.py's functions, imported on first use: importing it here would run it twice
    under `python -m jaxalign.sampling.answers` (runpy warns about that)."""
    if name in _ANSWERS:
        from jaxalign.sampling import answers
        return getattr(answers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
