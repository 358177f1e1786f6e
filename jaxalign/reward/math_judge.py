"""CGPO's math judge: the final answer after a required phrase, checked for equivalence.

    judge = MathAnswerJudge()                  # phrase "The final answer is", key "answer"
    out = judge(prompts, ["... The final answer is $\\frac{1}{2}$."], [{"answer": "0.5"}])
    out.passed                                 # bool [N]; scores None

The answer is read after the LAST occurrence of `phrase` (case-insensitive): its first math
block ($...$, $$...$$, \\(...\\), \\[...\\], \\boxed{...}), or else the plain text to the end
of its sentence, read as LaTeX (`MathAnswerJudge.answer_text`). A response without the phrase
fails even when its answer is right (CGPO counts a badly formatted correct answer as a
violation). `math-verify` compares it with `metadata[answer_key]` (wrapped in $...$ unless
delimited) for mathematical equivalence: 1/2 = 0.5 = \\frac{1}{2} = \\dfrac12, 2\\sqrt{2} =
\\sqrt{8}, x^2+2x+1 = (x+1)^2, {1,2} = {2,1}, [0,1) as an interval. An answer that is not one
expression ("3, not 4") fails.

Bounding each comparison. math-verify's own timeout is `signal.alarm`: whole seconds, the main
thread only (it raises ValueError in any other thread), it replaces the process's SIGALRM
handler, and it cannot interrupt a long C call. So the judge runs math-verify in a worker
subprocess of its own (started on first use, kept for later batches, math-verify's alarms off)
and waits at most `timeout_s` of wall clock for each response's verdict; past that it kills the
worker, counts the response as failed (and in `timeouts`) and starts a fresh worker for the
next one. The worker's address space is capped at `memory_mb` (RLIMIT_AS): a response whose
expression would need more (10^10^10 expanded) kills the worker, and counts the same way. Nothing here uses signals, so the judge works from any thread; calls on one judge are
serialised by a lock. The worker runs the snippet `_WORKER` with no jaxalign import (a start
costs about a second: sympy and math-verify's imports); it exits when the judge is closed or
garbage-collected, or when this process dies (its stdin closes).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import select
import subprocess
import sys
import threading
import time
import weakref

import numpy as np

from jaxalign.reward.judges import Judge, Verdicts

log = logging.getLogger(__name__)

# One request per line: [gold, prediction] (JSON); one reply per line: [gold_parsed, equivalent].
# Replies go to the real stdout; anything a library prints goes to stderr.
_WORKER = r"""
import json, logging, resource, sys
limit = int(sys.argv[1]) << 20  # the address space the worker may use (0: no limit)
if limit:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
out, sys.stdout = sys.stdout, sys.stderr
logging.disable(logging.CRITICAL)
from math_verify import parse, verify
golds = {}
print("ready", file=out, flush=True)
for line in sys.stdin:
    gold, pred = json.loads(line)
    if gold not in golds:
        if len(golds) > 4096:
            golds.clear()
        golds[gold] = parse(gold, parsing_timeout=None)
    g = golds[gold]
    ok = bool(g) and verify(g, parse(pred, parsing_timeout=None), timeout_seconds=None)
    print(json.dumps([bool(g), bool(ok)]), file=out, flush=True)
"""


class _Worker:
    """The math-verify subprocess: `ask(gold, pred, timeout_s)` -> (gold_parsed, ok) or None
    on timeout or a dead worker (then the process is killed; the next `ask` starts another)."""

    def __init__(self, start_timeout_s: float, memory_mb: int = 0):
        self.start_timeout_s, self.proc, self.buf = start_timeout_s, None, b""
        self.memory_mb = memory_mb

    def _start(self):
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER, str(self.memory_mb)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self.buf = b""
        if self._readline(time.monotonic() + self.start_timeout_s) != b"ready":
            self.close()
            raise RuntimeError("the math-verify worker did not start (its error, if any, is "
                               f"on stderr above); command: {sys.executable} -c <_WORKER>")

    def _readline(self, deadline: float) -> bytes | None:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:  # the worker died
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.strip()

    def ask(self, gold: str, pred: str, timeout_s: float) -> tuple[bool, bool] | None:
        if self.proc is None:
            self._start()
        try:
            self.proc.stdin.write(json.dumps([gold, pred]).encode() + b"\n")
        except BrokenPipeError:
            reply = None
        else:
            reply = self._readline(time.monotonic() + timeout_s)
        if reply is None:
            self.close()
            return None
        gold_ok, ok = json.loads(reply)
        return gold_ok, ok

    def close(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            for f in (self.proc.stdin, self.proc.stdout):
                f.close()
            self.proc = None


_DELIMITED = re.compile(r"\$\$.+?\$\$|\\\[.+?\\\]|\$.+?\$|\\\(.+?\\\)", re.DOTALL)


def _braced(text: str, start: int) -> str | None:
    """`text` up to the brace closing the one at `start`; None if it never closes."""
    depth = 0
    for k in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[k], 0)
        if depth == 0:
            return text[:k + 1]
    return None


def _as_latex(gold) -> str:
    """The reference answer as math-verify parses a gold: wrapped in $...$ unless delimited."""
    s = str(gold).strip()
    return s if any(d in s for d in ("$", "\\(", "\\[", "\\boxed")) else f"${s}$"


class MathAnswerJudge(Judge):
    """Pass iff the response has `phrase` and the answer after its last occurrence equals
    `metadata[answer_key]` mathematically (math-verify). See the module docstring.

    phrase: the required format, matched case-insensitively; the paper's "The final answer is".
    timeout_s: wall-clock seconds allowed per response (its parse and comparison); a response
      that takes longer fails and is counted in `self.timeouts`.
    start_timeout_s: seconds allowed for the worker to start (import sympy and math-verify).
    """

    def __init__(self, phrase: str = "The final answer is", answer_key: str = "answer",
                 timeout_s: float = 5.0, start_timeout_s: float = 60.0,
                 memory_mb: int = 4096, name: str = "math"):
        if importlib.util.find_spec("math_verify") is None:
            raise ImportError(f"judge {name!r} needs math-verify: pip install math-verify")
        if not phrase.strip() or timeout_s <= 0:
            raise ValueError(f"judge {name!r}: needs a non-empty phrase and timeout_s > 0, got "
                             f"{phrase!r}, {timeout_s}")
        self.phrase, self.answer_key, self.timeout_s, self.name = phrase, answer_key, timeout_s, name
        self.regex = re.compile(re.escape(phrase.strip()), re.IGNORECASE)
        self.timeouts = 0
        if memory_mb < 0:
            raise ValueError(f"judge {name!r}: memory_mb must be >= 0 (0: no limit), got "
                             f"{memory_mb}")
        self._worker = _Worker(start_timeout_s, memory_mb)
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, self._worker.close)

    def answer_text(self, completion: str) -> str | None:
        """What math-verify reads: the answer after the last `phrase`, None without one.

        A delimited answer ($$..$$, \\[..\\], $..$, \\(..\\), \\boxed{..}) is its first
        block; a plain one runs to the end of its sentence (a `.` before a space or the end of
        the line) and is read as LaTeX ("$" added), so 2\\sqrt{2} is not read as 2.
        """
        found = list(self.regex.finditer(completion))
        if not found:
            return None
        tail = completion[found[-1].end():].lstrip(" \t\r\n:")
        block = _DELIMITED.match(tail)
        if block:
            return block.group(0)
        if tail.startswith("\\boxed{"):
            return _braced(tail, len("\\boxed"))
        plain = re.split(r"\.(?:\s|$)|\n", tail, maxsplit=1)[0].strip()
        return f"${plain}$" if plain else None

    def judge(self, prompts, completions, metadata):
        out = np.zeros(len(completions), bool)
        with self._lock:
            for i, (text, meta) in enumerate(zip(completions, metadata)):
                if self.answer_key not in meta:
                    raise KeyError(f"judge {self.name!r}: response {i} has no metadata "
                                   f"{self.answer_key!r}")
                answer = self.answer_text(text)
                if not answer:
                    continue  # no required phrase (or nothing after it): a violation
                gold = _as_latex(meta[self.answer_key])
                reply = self._worker.ask(gold, answer, self.timeout_s)
                if reply is None:
                    self.timeouts += 1
                    log.warning("judge %r: response %d not judged within %.1f s: failed",
                                self.name, i, self.timeout_s)
                    continue
                gold_ok, out[i] = reply
                if not gold_ok:
                    raise ValueError(f"judge {self.name!r}: response {i}: metadata "
                                     f"{self.answer_key!r} = {meta[self.answer_key]!r} is not "
                                     "an answer math-verify can parse")
        return Verdicts(out)

    def close(self):
        """Stops the worker process (a later call starts a new one)."""
        with self._lock:
            self._worker.close()
