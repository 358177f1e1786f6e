"""Host-side batching of tokenized prompts: bucketed, left-padded numpy batches.

A batch has B rows (a power of two times the data-parallel size, at most `batch_size` rounded up
to that size; rows past the prompts are padding with budget 0) and P columns (the smallest
bucket that holds its longest prompt). Prompts are sorted by length first: a prompt's
completions do not depend on its batch, so this only saves padding.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Callable, Sequence

import numpy as np

from jaxalign.data.batching import pick_bucket


@dataclasses.dataclass
class Batch:
    index: np.ndarray  # [k] positions of its k prompts in the caller's list
    tokens: np.ndarray  # [B, P] int32, left-padded
    mask: np.ndarray  # [B, P] bool, True on real tokens
    ids: np.ndarray  # [B] uint32 prompt ids for the random keys
    budget: np.ndarray  # [B] int32 most new tokens per row: min(max_new, max_len - length)


def key_id(prompt_id: int | str) -> int:
    """A prompt id as the uint32 folded into its random key.

    Ints in [0, 2**32) and their decimal strings ("17", as jaxalign.data gives default ids) map
    to themselves; anything else to the first 4 bytes of its blake2b digest.
    """
    if isinstance(prompt_id, str) and prompt_id.isdigit() and int(prompt_id) < 2**32:
        return int(prompt_id)
    if isinstance(prompt_id, (int, np.integer)) and 0 <= prompt_id < 2**32:
        return int(prompt_id)
    digest = hashlib.blake2b(repr(prompt_id).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def _pow2_at_least(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def make_batches(tokens: Sequence[list[int]], ids: Sequence[int], *, batch_size: int | None,
                 dp: int, buckets: Sequence[int], max_len: int, max_new: int, pad_id: int,
                 agree: Callable[[int], int] = lambda x: x) -> list[Batch]:
    """Batches covering every prompt once; `agree` makes shapes equal across processes.
    Two prompts with the same key id (they would share random streams) are refused."""
    first: dict[int, int] = {}
    for i, k in enumerate(ids):
        j = first.setdefault(int(k), i)
        if j != i:
            raise ValueError(f"prompts {j} and {i} have the same key id {int(k)} (`ids=`, "
                             f"default: the position): they would share their random streams; "
                             f"give every prompt of a call its own id")
    batch_size = batch_size or max(1, len(tokens))
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    most_rows = -(-batch_size // dp) * dp
    order = sorted(range(len(tokens)), key=lambda i: len(tokens[i]))
    batches = []
    for start in range(0, len(order), batch_size):
        index = np.asarray(order[start:start + batch_size])
        rows = agree(min(most_rows, dp * _pow2_at_least(-(-len(index) // dp))))
        P = pick_bucket(agree(max(len(tokens[i]) for i in index)), buckets)
        out = Batch(index=index, tokens=np.full((rows, P), pad_id, np.int32),
                    mask=np.zeros((rows, P), bool), ids=np.zeros((rows,), np.uint32),
                    budget=np.zeros((rows,), np.int32))
        for row, i in enumerate(index):
            t = tokens[i]
            out.tokens[row, P - len(t):] = t
            out.mask[row, P - len(t):] = True
            out.ids[row] = ids[i]
            out.budget[row] = min(max_new, max_len - len(t))
        batches.append(out)
    return batches
