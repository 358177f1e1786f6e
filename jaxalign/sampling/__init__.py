"""Sampling: the compiled decode loop and token-selection rules.

selection.py  token selection as pure functions of logits (greedy, temperature, top-k/p, min-p)
loop.py       the jitted prefill + while_loop of one-token steps (state, settings, GenARM guides)
prompts.py    host-side bucketed, left-padded prompt batches
sampler.py    `Sampler`: text or token ids in, completions and log-probs out, on a mesh
output.py     `SampleOutput`: the numpy arrays (and texts) a Sampler returns
args.py       ARGS decoding (a reward model scores the top-k candidates at every step)
best_of_n.py  best-of-N selection of a Sampler's completions by a score function
"""

from jaxalign.sampling.best_of_n import BestOfN, best_of_n
from jaxalign.sampling.loop import LM, Settings, State, decode, prefill
from jaxalign.sampling.output import SampleOutput
from jaxalign.sampling.sampler import (GuideModel, Sampler, completion_text,
                                       stop_ids_from_checkpoint)
from jaxalign.sampling.selection import GUIDE_CONVENTIONS, Rule, choose, guided_logits

__all__ = [
    "BestOfN", "best_of_n", "GUIDE_CONVENTIONS", "LM", "GuideModel", "Rule", "SampleOutput",
    "Sampler", "Settings", "State", "choose", "completion_text", "decode", "guided_logits",
    "prefill", "stop_ids_from_checkpoint",
]
