"""The evaluation suite: what the papers measure, on fixed held-out prompts and fixed seeds.

    suite = Suite(ref, EvalConfig())
    row = suite.evaluate(params)                 # a policy's samples (temperature 1)
    row = suite.score(completions, kl=kl)        # given completions (best-of-N, guided ...)

Keys of a row (floats):
  reward/<task>        mean true reward of each task on its prompts (`tasks.TASKS`)
  kl                   Monte-Carlo sequence KL(pi || pi_ref): mean over samples of
                       sum_t log pi(y_t) - log pi_ref(y_t) (sampler's model_logprobs, and one
                       reference forward); for given completions, the `kl` passed in
  win_rate             mean P(policy sample > reference sample) under the BT oracle of
                       `win_task`, sample j of a prompt against the reference's sample j
  violation/<judge>    share of samples failing each constraint judge; violation/any: any fails
  distinct_1/2         distinct n-grams / n-grams over all text-prompt completions
  length               mean completion length in tokens (EOS included)
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from jaxalign.gym import judges as judges_lib
from jaxalign.gym import language as L
from jaxalign.gym import oracles, tasks
from jaxalign.gym.policy import Reference, pack
from jaxalign.models import completion_logprobs
from jaxalign.sampling import Sampler


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    num_text: int = 128
    num_arith: int = 32
    samples: int = 4  # per prompt
    max_new_tokens: int = 24
    prompt_seed: int = 99_991  # prompts the language's training data never drew from
    seed: int = 1234
    win_task: str = "sentiment"
    win_temperature: float = 0.5


def completions_of(out, i: int) -> list[list[int]]:
    """Prompt i's sampled completions as token lists (EOS kept when it stopped there)."""
    return [[int(t) for t in out.tokens[i, j, :out.lengths[i, j]]]
            for j in range(out.tokens.shape[1])]


class Suite:
    def __init__(self, ref: Reference, cfg: EvalConfig = EvalConfig()):
        self.ref, self.cfg = ref, cfg
        lang = ref.language
        self.prompts = (lang.sample_prompts(cfg.num_text, cfg.prompt_seed, "text")
                        + lang.sample_prompts(cfg.num_arith, cfg.prompt_seed + 1, "arith"))
        self.is_text = np.array([i < cfg.num_text for i in range(len(self.prompts))])
        self.sampler = Sampler(ref.model_cfg, ref.params, ref.tokenizer, max_len=64)
        self.judges = judges_lib.constraint_judges(max_tokens=cfg.max_new_tokens - 8)
        self._logps = jax.jit(
            lambda p, t, m, lm: completion_logprobs(ref.model_cfg, p, t, m, lm).sum)
        self.ref_completions = self.sample(ref.params)[0]

    def sample(self, params, n: int | None = None, seed: int | None = None):
        """(completions [N][n] token lists: n per prompt; sampler output) of `params` at
        temperature 1."""
        self.sampler.set_params(params)
        out = self.sampler(prompt_ids=self.prompts, n=n or self.cfg.samples,
                           max_new_tokens=self.cfg.max_new_tokens,
                           seed=self.cfg.seed if seed is None else seed)
        return [completions_of(out, i) for i in range(len(self.prompts))], out

    def logps(self, params, completions) -> np.ndarray:
        """[P, n] summed log-probs of given completions under `params`."""
        flat_p = [p for p, cs in zip(self.prompts, completions) for _ in cs]
        flat_c = [c for cs in completions for c in cs]
        out = []
        for i in range(0, len(flat_p), 256):
            t, m, lm = pack(flat_p[i:i + 256], flat_c[i:i + 256], length=64)
            out.append(np.asarray(self._logps(params, t, m, lm)))
        return np.concatenate(out).reshape(len(completions), -1)

    def evaluate(self, params) -> dict:
        completions, out = self.sample(params)
        policy_lp = out.model_logprobs.sum(-1)  # [P, n], 0 after each completion's end
        kl = float(np.mean(policy_lp - self.logps(self.ref.params, completions)))
        return self.score(completions, kl=kl, stop_reason=out.stop_reason)

    def score(self, completions, *, kl: float, stop_reason=None) -> dict:
        c, n = self.cfg, len(completions[0])
        flat_p = [p for p in self.prompts for _ in range(n)]
        flat_c = [y for ys in completions for y in ys]
        text_rows = np.repeat(self.is_text, n)
        row = {}
        for name, task in tasks.TASKS.items():
            keep = text_rows if task.prompts == "text" else ~text_rows
            r = tasks.score(task.reward, [p for p, k in zip(flat_p, keep) if k],
                            [y for y, k in zip(flat_c, keep) if k])
            row[f"reward/{name}"] = float(r.mean())
        row["kl"] = float(kl)
        oracle = oracles.BTOracle(tasks.TASKS[c.win_task].reward, c.win_temperature)
        ref_c = [y for ys in self.ref_completions for y in ys[:n]]
        keep = text_rows if tasks.TASKS[c.win_task].prompts == "text" else ~text_rows
        pick = lambda xs: [x for x, k in zip(xs, keep) if k]  # noqa: E731
        row["win_rate"] = float(oracle.prob(pick(flat_p), pick(flat_c), pick(ref_c)).mean())
        if stop_reason is None:
            stop = ["stop" if y and y[-1] == L.EOS else "length" for y in flat_c]
        else:
            stop = list(np.asarray(stop_reason).reshape(-1))
        verdicts = self.judges([L.text(p) for p in flat_p], [L.text(y) for y in flat_c],
                               [{"stop_reason": s} for s in stop])
        for j, name in enumerate(verdicts.names):
            row[f"violation/{name}"] = float(1.0 - verdicts.verdicts[:, j].mean())
        row["violation/any"] = float(1.0 - verdicts.passed.mean())
        text_c = [oracles.strip(y, len(y)) for y in pick(flat_c)] if keep.any() else []
        for k in (1, 2):
            grams = [tuple(y[i:i + k]) for y in text_c for i in range(len(y) - k + 1)]
            row[f"distinct_{k}"] = len(set(grams)) / max(len(grams), 1)
        row["length"] = float(np.mean([len(y) for y in flat_c]))
        return row


def markdown_table(rows: list[dict], columns: list[str], digits: int = 3) -> str:
    """A Markdown table of `rows` (dicts) restricted to `columns`; floats rounded."""
    fmt = lambda v: f"{v:.{digits}f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"
