"""The grow step shared by ReST, SPPO and CGPO: n completions per prompt, written as JSONL shards.

    grow("prompts.jsonl", "ckpt/", out_dir="grow/iter1", n=25, temperature=0.8,
         max_new_tokens=256, score_fn=reward)          # ReST (Gulcehre et al. 2023): D_g
    # reward = jaxalign.reward.scoring.make_score_fn(scorer, normalize="sigmoid")
    grow(prompts, sampler, out_dir=..., n=5, temperature=0.7, top_p=0.9)   # SPPO's K=5 samples

prompts: a JSONL file of {"prompt": str | messages, "id"?: str | int} rows (read
with jaxalign.data: a malformed row raises DataError naming file and line), or an in-memory
list of strings or such dicts. A prompt's id (default: its index in the dataset) seeds its
random keys, so its completions do not depend on sharding, batching or restarts. Ids must be
unique (17 and "17" are the same id); a repeated one is refused, naming both rows.

Output: out_dir/shard-00000-of-00004.jsonl, ...: shard k holds prompts [k * shard_size,
(k + 1) * shard_size), one line per (prompt, sample):
  {"id", "prompt", "sample", "completion" (text, stop token excluded, continuing the prompt's
   text: see sampling.completion_text), "prompt_tokens",
   "tokens" (the stop token included), "logprobs" (sampling distribution), "model_logprobs"
   (unmodified policy), "length", "stop_reason" ("stop" | "length"), "score" (with score_fn)}
Every number written is finite (the shards are strict JSON): a non-finite score is an error
naming its record (prompt id and sample); the Sampler never returns non-finite log-probs.
A shard is written with `jaxalign.io.write_committed` (the data, then a marker that vouches for
its bytes; no rename, so object stores work too): a killed run leaves only whole shards and a
restarted run skips them. out_dir/grow.json records what the records depend on: the settings
(as JSON gives them back: a tuple of stop ids is a list), a digest of the prompts, the
sampler's own settings, the tokenizer's fingerprint and the model's vocabulary size (the
shards' ids mean nothing under another), a fingerprint of the weights (`Sampler.weights`:
policy and guides) and the score function (`score_id`, default its qualified name).
Restarting with any of them changed is an error naming what changed (the finished shards
would not match). `read_shards` reads committed shards only.

Multi-host: every process samples its own slice of each shard's prompts (`Sampler.stream` with
their global ids) and writes it as its own part, `shard-...jsonl.part-00001-of-00004`, committed
separately; a shard is done when all its parts are. Process 0 writes grow.json. With one
process the part is the shard file itself.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxalign import distributed, io
from jaxalign.checksum import data_fingerprint, tree_fingerprint
from jaxalign.data.readers import read_examples
from jaxalign.sampling import Sampler
from jaxalign.sampling.prompts import key_id

# (prompts, completions) -> one score per pair; called once per finished batch with the N pairs
# of its prompts (each prompt repeated for its n consecutive completions), as
# jaxalign.reward.scoring.make_score_fn builds them.
ScoreFn = Callable[[list, list[str]], Sequence[float]]


def read_prompts(source: str | os.PathLike | Sequence) -> list[dict]:
    """[{"id", "prompt", "where"}] from a JSONL path (ids: str; where: "path:line") or a list of
    strings / dicts (ids: int by default, else str or int as given; where: "prompt i")."""
    if isinstance(source, (str, os.PathLike)):
        return [{"id": ex["id"], "prompt": ex["prompt"], "where": ex["location"]}
                for ex in read_examples("prompt", source)]
    out = []
    for i, row in enumerate(source):
        row = {"prompt": row} if isinstance(row, str) else dict(row)
        if not row.get("prompt"):
            raise ValueError(f"prompt {i}: missing or empty 'prompt'")
        rid = row.get("id", i)
        if isinstance(rid, (bool, np.bool_)) or not isinstance(rid, (str, int, np.integer)):
            raise ValueError(f"prompt {i}: 'id' must be a string or an int, got {rid!r}")
        out.append({"id": rid if isinstance(rid, str) else int(rid), "prompt": row["prompt"],
                    "where": f"prompt {i}"})
    return out


def check_ids(rows: list[dict], shard_size: int) -> None:
    """Prompt ids are unique (as strings: 17 and "17" seed the same random stream), and no two
    prompts of a shard (one Sampler call) share a 32-bit key id (`key_id` hashes other ids)."""
    first: dict[str, int] = {}
    for i, r in enumerate(rows):
        j = first.setdefault(str(r["id"]), i)
        if j != i:
            raise ValueError(f"prompt ids must be unique: {r['where']} has id {r['id']!r}, as "
                             f"{rows[j]['where']} has ({rows[j]['id']!r})")
    for start in range(0, len(rows), shard_size):
        keys: dict[int, int] = {}
        for i in range(start, min(start + shard_size, len(rows))):
            j = keys.setdefault(key_id(rows[i]["id"]), i)
            if j != i:
                raise ValueError(
                    f"the ids {rows[j]['id']!r} ({rows[j]['where']}) and {rows[i]['id']!r} "
                    f"({rows[i]['where']}) hash to the same random key id "
                    f"{key_id(rows[i]['id'])}, so they would share their random streams: "
                    f"give one of them another id")


def _policy(policy, tokenizer, mesh, sampler_kw) -> Sampler:
    if isinstance(policy, Sampler):
        return policy
    if isinstance(policy, (str, os.PathLike)):
        return Sampler.from_pretrained(os.fspath(policy), tokenizer, mesh=mesh, **sampler_kw)
    cfg, params = policy
    return Sampler(cfg, params, tokenizer, mesh=mesh, **sampler_kw)


def _json(x):
    """numpy scalars and arrays as the JSON values they hold (for recorded settings)."""
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    raise ValueError(f"grow records its settings in grow.json; a {type(x).__name__} ({x!r}) "
                     "cannot be recorded: pass plain numbers, strings and lists")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


# What a grow.json key means, where its name does not say it.
_LABELS = {"weights": "weights (a fingerprint of the sampler's policy and guide params)",
           "prompts": "prompts (a digest of their ids and texts)",
           "score_fn": "score_fn (score_id, default the function's qualified name)"}


def _check_settings(out_dir: str, settings: dict) -> None:
    """Records `settings` in out_dir/grow.json, or checks they equal the recorded ones. Both
    sides are compared as JSON gives them back (a tuple is a list, a numpy float a float)."""
    settings = json.loads(json.dumps(settings, default=_json))
    path = os.path.join(out_dir, "grow.json")
    if io.is_committed(path):
        old, new = _flat(io.read_json(path)), _flat(settings)
        show = lambda d, k: repr(d[k]) if k in d else "absent"
        diff = [f"{_LABELS.get(k, k)}: was {show(old, k)}, now {show(new, k)}"
                for k in sorted(set(old) | set(new)) if k not in old or old[k] != new.get(k)]
        if diff:
            raise ValueError(
                f"{out_dir} holds a grow run with other settings ({'; '.join(diff)}): its "
                f"finished shards would not match this run's. To resume it, run with the "
                f"settings recorded in {path}; to start over, delete {out_dir} or pass "
                f"another out_dir")
        return
    if jax.process_index() == 0:
        io.write_json(path, settings)


def callable_id(fn: Callable | None) -> str | None:
    """"module.qualified_name" of a function (of a partial's function, of a callable's class)."""
    if fn is None:
        return None
    while isinstance(fn, functools.partial):
        fn = fn.func
    if not hasattr(fn, "__qualname__"):
        fn = type(fn)
    return f"{getattr(fn, '__module__', '?')}.{fn.__qualname__}"


def tokenizer_fingerprint(tokenizer) -> str | None:
    """"<size>:<sha256 of the sorted vocabulary>[:12]": records' token ids mean what they mean
    only under the tokenizer that made them."""
    if tokenizer is None:
        return None
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    digest = hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:12]
    return f"{len(tokenizer)}:{digest}"


def part_paths(path: str, count: int | None = None) -> list[str]:
    """The files of one shard: itself with one process, else one part per process."""
    count = jax.process_count() if count is None else count
    return [path] if count == 1 else [f"{path}.part-{p:05d}-of-{count:05d}"
                                      for p in range(count)]


def shard_done(path: str, count: int | None = None) -> bool:
    return all(io.is_committed(p) for p in part_paths(path, count))


def _name(row: dict, j: int) -> str:
    return f"the record of prompt id {row['id']!r} ({row['where']}), sample {j}"


def _scores(rows: list[dict], out, pairs, score_fn: ScoreFn) -> list[float]:
    """score_fn's scores of the pairs: one finite number each (else ValueError naming one)."""
    got = score_fn([rows[k]["prompt"] for k, _ in pairs], [out.texts[k][j] for k, j in pairs])
    try:
        scores = np.asarray(got, np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"score_fn must return one number per (prompt, completion) pair, "
                         f"got {str(got)[:100]}") from None
    if scores.shape != (len(pairs),):
        raise ValueError(f"score_fn returned {scores.size} scores (shape {scores.shape}) for "
                         f"{len(pairs)} (prompt, completion) pairs")
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        k, j = pairs[bad[0]]
        value = got[bad[0]] if isinstance(got, (list, tuple)) else scores[bad[0]]
        value = scores[bad[0]] if isinstance(value, (int, float, np.number)) else repr(value)
        raise ValueError(f"score_fn gave {value} for {_name(rows[k], j)}: scores must be "
                         f"finite numbers ({bad.size} of {len(pairs)} in this batch are not)")
    return scores.tolist()


def _check_finite(rows: list[dict], out) -> None:
    """The log-probs written are finite: the shards are strict JSON."""
    for name in ("logprobs", "model_logprobs", "guide_logprobs"):
        x = getattr(out, name)
        bad = np.argwhere(~np.isfinite(x.reshape(x.shape[:2] + (-1,))).all(-1))
        if bad.size:
            k, j = bad[0]
            hint = (" (a guide with alpha 0 gave the token probability 0)"
                    if name == "guide_logprobs" else "")
            raise ValueError(f"{name} of {_name(rows[k], j)} are not finite{hint}: the "
                             "shards are strict JSON")


def _records(rows: list[dict], out, score_fn: ScoreFn | None) -> list[dict]:
    """The batch's records, prompt-major (n consecutive samples per prompt), scored."""
    n = out.lengths.shape[1]
    pairs = [(k, j) for k in range(len(rows)) for j in range(n)]
    _check_finite(rows, out)
    scores = None if score_fn is None else _scores(rows, out, pairs, score_fn)
    records = []
    for i, (k, j) in enumerate(pairs):
        L = int(out.lengths[k, j])
        rec = {"id": rows[k]["id"], "prompt": rows[k]["prompt"], "sample": j,
               "completion": out.texts[k][j], "prompt_tokens": out.prompt_tokens[k],
               "tokens": out.tokens[k, j, :L].tolist(), "logprobs": out.logprobs[k, j, :L].tolist(),
               "model_logprobs": out.model_logprobs[k, j, :L].tolist(), "length": L,
               "stop_reason": str(out.stop_reason[k, j])}
        if out.guide_logprobs.shape[2]:  # guided decoding: each ARM's token rewards
            rec["guide_logprobs"] = out.guide_logprobs[k, j, :, :L].tolist()
        if scores is not None:
            rec["score"] = scores[i]
        records.append(rec)
    return records


def grow(prompts, policy, *, out_dir: str, n: int, tokenizer=None, shard_size: int = 256,
         batch_size: int = 32, score_fn: ScoreFn | None = None, score_id: str | None = None,
         seed: int = 0, mesh=None, progress: bool = True, sampler_kw: dict | None = None,
         on_shard: Callable[[str], Any] | None = None, **sampling) -> list[str]:
    """Writes every shard not yet in out_dir; returns the paths of all shards.

    policy: a Sampler, a HF checkpoint dir, or (ModelConfig, params) (then pass tokenizer).
    batch_size: prompts per compiled batch (batch_size * n rows). score_fn: see ScoreFn.
    score_id: the score function's identity in grow.json (default: its qualified name); a
      restart whose score function has another is refused.
    sampling: Sampler.stream arguments (max_new_tokens, temperature, top_p, ...);
    sampler_kw: Sampler arguments when the sampler is built here (max_len, buckets, ...).
    on_shard: called with a shard's path once it is committed.
    """
    if not (isinstance(shard_size, int) and shard_size >= 1):
        raise ValueError(f"shard_size must be an int >= 1, got {shard_size!r}")
    rows = read_prompts(prompts)
    if not rows:
        raise ValueError("no prompts")
    check_ids(rows, shard_size)
    sampler = _policy(policy, tokenizer, mesh, sampler_kw or {})
    io.makedirs(out_dir)
    _check_settings(out_dir, {
        "n": n, "seed": seed, "shard_size": shard_size, "num_prompts": len(rows),
        "prompts": data_fingerprint([[r["id"], r["prompt"]] for r in rows])[:16],
        "sampling": sampling, "sampler": {
            "max_len": sampler.max_len, "stop_ids": sampler.stop_ids, "pad_id": sampler.pad_id,
            "guide_weights": sampler.guide_weights, "guide_convention": sampler.guide_convention,
            "crop_vocab": sampler.crop_vocab},
        "tokenizer": tokenizer_fingerprint(sampler.tokenizer),
        "vocab_size": sampler.cfg.vocab_size,
        "weights": tree_fingerprint(sampler.weights())[:16],
        "score_fn": score_id if score_id is not None else callable_id(score_fn)})
    count = -(-len(rows) // shard_size)
    paths = [os.path.join(out_dir, f"shard-{k:05d}-of-{count:05d}.jsonl") for k in range(count)]
    todo = [k for k in range(count) if not shard_done(paths[k])]
    me = jax.process_index()
    bar = tqdm(total=sum(len(rows[k * shard_size:(k + 1) * shard_size]) for k in todo) * n,
               unit="sample", desc=f"grow {out_dir}", disable=not progress)
    start, tokens = time.perf_counter(), 0
    for k in todo:
        shard = rows[k * shard_size:(k + 1) * shard_size]
        # this process's prompts; every process passes the sampler the same number (its
        # batches are collective), topped up with fillers (a real prompt under an id of their
        # own) whose records are dropped: a prompt's samples depend on its id alone
        shard, real = distributed.process_share(shard, lambda j: {**rows[0],
                                                                  "id": f"\0filler:{j}"})
        records: list[list[dict]] = [[] for _ in shard]
        for index, out in sampler.stream([r["prompt"] for r in shard], ids=[r["id"] for r in shard],
                                         n=n, seed=seed, batch_size=batch_size, **sampling):
            batch = _records([shard[i] for i in index], out, score_fn)
            for i, recs in zip(index, _group(batch, n)):
                records[i] = recs
            tokens += out.num_tokens
            bar.update(len(index) * n)
            bar.set_postfix(tok_s=f"{tokens / (time.perf_counter() - start):.0f}")
        io.write_jsonl(part_paths(paths[k])[me], (r for recs in records[:real] for r in recs))
        if on_shard is not None:
            on_shard(paths[k])
    bar.close()
    distributed.barrier("jaxalign_grow")  # every part written before anyone reads the shards
    return paths


def _group(records: list[dict], n: int) -> list[list[dict]]:
    return [records[i:i + n] for i in range(0, len(records), n)]


def read_shards(paths: Sequence[str]) -> list[dict]:
    """Every record of the (committed) shards, in order; a shard that is not: FileNotFoundError."""
    out = []
    for path in paths:
        parts = next((p for p in (part_paths(path, c) for c in _part_counts(path))
                      if all(io.is_committed(q) for q in p)), None)
        if parts is None:
            raise FileNotFoundError(f"{path}: shard not committed (an unfinished grow run?)")
        for part in parts:
            out.extend(io.read_jsonl(part))
    return out


def _part_counts(path: str) -> list[int]:
    """1, then the part counts of `path`'s part files on disk."""
    d, name = os.path.split(path)
    counts = {int(f.rsplit("-of-", 1)[1]) for f in io.listdir(d or ".")
              if f.startswith(name + ".part-") and not f.endswith(io.MARKER)}
    return [1] + sorted(counts)
