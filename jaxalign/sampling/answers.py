"""Answer files for AlpacaEval and MT-Bench, from any Sampler over a local prompt file.

    python -m jaxalign.sampling.answers alpaca_eval --model CKPT_DIR \
        --questions alpaca_eval.json --out outputs.json --model_id my-model
    python -m jaxalign.sampling.answers mt_bench --model CKPT_DIR \
        --questions question.jsonl --out model_answer/my-model.jsonl --model_id my-model
    (also: --max_new_tokens N --seed S --batch_size B --max_len L --devices D --fsdp F;
    alpaca_eval: --temperature T --top_p P --dataset NAME)

From Python, with a Sampler you already have:

    write_alpaca_eval(sampler, load_alpaca_eval("alpaca_eval.json"), "outputs.json",
                      generator="my-model")
    write_mt_bench(sampler, load_mt_bench("question.jsonl"), "my-model.jsonl",
                   model_id="my-model")

AlpacaEval (`alpaca_eval --model_outputs outputs.json`): a JSON list, in input order, of
{"instruction", "output", "generator", "dataset"}. Input: its eval set as a JSON list or JSONL
of records with "instruction"; their "dataset" is kept (a record without one gets `dataset`,
default "helpful_base"); any "output" or "generator" they carry is replaced. The instruction is
one user turn of the tokenizer's chat template when it has one (`chat`). AlpacaEval prescribes
no decoding settings (each leaderboard entry's model config has its own); the defaults here,
temperature 0.7, top_p 1.0, at most 2048 new tokens, are a common choice: pass yours.

MT-Bench (FastChat's `fastchat/llm_judge/gen_model_answer.py`): one JSON line per question,
{"question_id", "answer_id", "model_id", "choices": [{"index": c, "turns": [answer per turn]}],
"tstamp"}, sorted by question_id as its `reorg_answer_file` leaves them. Input: FastChat's
question.jsonl ({"question_id", "category", "turns", optional "reference"}); every turn is
answered (MT-Bench has 2, other benches 1 or more). Turn j's prompt is the chat template over
[user turn 1, assistant answer 1, ..., user turn j] with the generation prompt, so each answer
is conditioned on the earlier ones. Temperature per category as FastChat's `temperature_config`
(unknown categories 0.7; below 1e-4 greedy); FastChat samples with transformers' `generate`,
whose defaults add top_k=50 (the command takes top_k/top_p from the checkpoint's
generation_config.json when it sets them); at most 1024 new tokens (FastChat's default).
Questions of one temperature are answered together: one sampler call per temperature per turn.
Answers are stripped of surrounding whitespace, as FastChat does.
Differences from FastChat, on purpose: "answer_id" is not a random shortuuid but a
deterministic one of the same form (22 characters of shortuuid's 57-letter alphabet, from the
sha256 of model_id, question_id and seed: `answer_id`); a question's random keys come from its
question_id, choice and turn (not from its batch), so an answer does not depend on which other
questions run with it. Resume: answers already in the output file are kept and their questions
skipped (FastChat appends and keeps the last answer per question_id, regenerating all), and the
file is rewritten whole (atomically) after each temperature group, so an interrupted run
continues where it stopped. An answer there of another model_id, or with the wrong number of
choices or turns, is an error: one file holds one model's answers.

Bad input (a record without "instruction", a question without turns, a line that is not JSON)
is a ValueError naming the file and its line (JSONL) or record (a JSON list, 0-based), before
anything is sampled.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from typing import Any, Sequence

import jax

from jaxalign import io, sharding
from jaxalign.sampling.sampler import Sampler

# fastchat/llm_judge/common.py `temperature_config`; categories not listed: 0.7.
MT_BENCH_TEMPERATURES = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0,
                         "coding": 0.0, "reasoning": 0.0, "stem": 0.1, "humanities": 0.1,
                         "arena-hard-200": 0.0}
DEFAULT_TEMPERATURE = 0.7
GREEDY_BELOW = 1e-4  # FastChat: temperature < 1e-4 means do_sample=False
SHORTUUID_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def read_records(path: str) -> list[tuple[str, Any]]:
    """(location, value) of each record of a JSON list or a JSONL file; the location is
    "path: record i" (0-based) or "path:line"."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            text = fh.read().decode("utf-8-sig")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from None
    if text.lstrip().startswith("["):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        records = [(f"{path}: record {i}", v) for i, v in enumerate(values)]
    else:
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append((f"{path}:{n}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not valid JSON ({e.msg}, column "
                                     f"{e.colno}); expected a JSON list or one JSON object "
                                     f"per line") from None
    if not records:
        raise ValueError(f"{path}: no records")
    return records


def _check_alpaca(record, loc: str) -> dict:
    if not isinstance(record, dict):
        raise ValueError(f"{loc}: expected a JSON object with 'instruction', got "
                         f"{type(record).__name__}")
    if not (isinstance(record.get("instruction"), str) and record["instruction"].strip()):
        raise ValueError(f"{loc}: 'instruction' must be a non-empty string, got "
                         f"{record.get('instruction')!r}")
    if "dataset" in record and not isinstance(record["dataset"], str):
        raise ValueError(f"{loc}: 'dataset' must be a string, got {record['dataset']!r}")
    return record


def _check_question(question, loc: str) -> dict:
    if not isinstance(question, dict):
        raise ValueError(f"{loc}: expected a JSON object with 'question_id' and 'turns', got "
                         f"{type(question).__name__}")
    qid, turns = question.get("question_id"), question.get("turns")
    if isinstance(qid, bool) or not (isinstance(qid, int) or isinstance(qid, str) and qid):
        raise ValueError(f"{loc}: 'question_id' must be an int or a non-empty string, got "
                         f"{qid!r}")
    if not (isinstance(turns, list) and turns
            and all(isinstance(t, str) and t.strip() for t in turns)):
        raise ValueError(f"{loc} (question_id {qid!r}): 'turns' must be a list of one or more "
                         f"non-empty strings (MT-Bench has 2), got {turns!r}")
    if not isinstance(question.get("category", ""), str):
        raise ValueError(f"{loc} (question_id {qid!r}): 'category' must be a string, got "
                         f"{question['category']!r}")
    return question


def _check_questions(located: Sequence[tuple[str, Any]]) -> list[dict]:
    seen, out = {}, []
    for loc, q in located:
        qid = _check_question(q, loc)["question_id"]
        if qid in seen:
            raise ValueError(f"{loc}: question_id {qid!r} again (also at {seen[qid]})")
        seen[qid] = loc
        out.append(q)
    return out


def load_alpaca_eval(path: str) -> list[dict]:
    """AlpacaEval's eval set (a JSON list or JSONL of records with "instruction"), checked."""
    return [_check_alpaca(r, loc) for loc, r in read_records(path)]


def load_mt_bench(path: str) -> list[dict]:
    """FastChat's question.jsonl, checked: question_id (int or str, unique), turns (>= 1)."""
    return _check_questions(read_records(path))


def _name(value, what: str) -> str:
    if not (isinstance(value, str) and value.strip()):
        raise ValueError(f"{what} must be a non-empty string (the model's name), got {value!r}")
    return value


def _chat_template(sampler, need: bool | None, what: str) -> bool:
    """Whether prompts go through the tokenizer's chat template (need None: if it has one)."""
    tokenizer = getattr(sampler, "tokenizer", None)
    if tokenizer is None:
        raise ValueError(f"{what}: the sampler has no tokenizer; answer files hold text")
    has = bool(getattr(tokenizer, "chat_template", None))
    if need and not has:
        raise ValueError(f"{what}: the tokenizer has no chat_template (set "
                         f"tokenizer.chat_template to the model's); the turns of a conversation "
                         f"are rendered with it")
    return has if need is None else bool(need)


def write_alpaca_eval(sampler, records: Sequence[dict], path: str, *, generator: str,
                      dataset: str = "helpful_base", chat: bool | None = None,
                      max_new_tokens: int = 2048, temperature: float = 0.7, top_p: float = 1.0,
                      seed: int = 0, batch_size: int | None = None) -> list[dict]:
    """AlpacaEval's model-outputs JSON at `path` (written atomically); returns its rows.

    generator: the model's name in the file. dataset: for records without their own. chat:
    render each instruction as a user turn of the chat template (None: when the tokenizer has
    one; False: the instruction as plain text).
    """
    generator = _name(generator, "generator")
    records = [_check_alpaca(r, f"record {i}") for i, r in enumerate(records)]
    if not records:
        raise ValueError("write_alpaca_eval: no records")
    chat = _chat_template(sampler, chat, "write_alpaca_eval")
    prompts = [[{"role": "user", "content": r["instruction"]}] if chat else r["instruction"]
               for r in records]
    out = sampler(prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                  top_p=top_p, seed=seed, batch_size=batch_size)
    rows = [{"instruction": r["instruction"], "output": texts[0].strip(), "generator": generator,
             "dataset": r.get("dataset", dataset)} for r, texts in zip(records, out.texts)]
    io.write_atomic(path, (json.dumps(rows, indent=2, ensure_ascii=False) + "\n").encode())
    return rows


def answer_id(model_id: str, question_id: int | str, seed: int) -> str:
    """A shortuuid-like id (22 letters of its 57-letter alphabet), a function of its inputs."""
    digest = hashlib.sha256(json.dumps([model_id, question_id, seed]).encode()).digest()
    n, letters = int.from_bytes(digest, "big"), []
    for _ in range(22):
        n, r = divmod(n, len(SHORTUUID_ALPHABET))
        letters.append(SHORTUUID_ALPHABET[r])
    return "".join(letters)


def mt_bench_temperature(question: dict) -> float:
    """FastChat's temperature for the question's category; 0.0 (greedy) below 1e-4."""
    t = MT_BENCH_TEMPERATURES.get(question.get("category"), DEFAULT_TEMPERATURE)
    return 0.0 if t < GREEDY_BELOW else t


def _order(question_id) -> tuple:
    return (isinstance(question_id, str), question_id)  # ints, then strings


def read_answers(path: str, model_id: str) -> dict:
    """{question_id: (location, row)} of an MT-Bench answer file (empty when there is none);
    the last row of a question_id wins, as FastChat's reorg_answer_file keeps it."""
    try:
        with open(path, "rb") as fh:
            if not fh.read().strip():
                return {}
    except FileNotFoundError:  # a first run
        return {}
    rows = {}
    for loc, row in read_records(path):
        if not (isinstance(row, dict) and isinstance(row.get("choices"), list)
                and "question_id" in row):
            raise ValueError(f"{loc}: not an MT-Bench answer (question_id, model_id, choices); "
                             f"remove the line, or the file, to answer again")
        if row.get("model_id") != model_id:
            raise ValueError(f"{loc}: an answer of model_id {row.get('model_id')!r}, not "
                             f"{model_id!r}: one answer file holds one model's answers "
                             f"(FastChat reads model_answer/<model_id>.jsonl)")
        rows[row["question_id"]] = (loc, row)
    return rows


def _check_kept(loc: str, row: dict, question: dict, num_choices: int) -> None:
    shapes = [len(c.get("turns", ())) if isinstance(c, dict) else None for c in row["choices"]]
    if shapes != [len(question["turns"])] * num_choices:
        raise ValueError(f"{loc}: the kept answer to question_id {question['question_id']!r} "
                         f"has {len(shapes)} choices of {shapes} turns; expected {num_choices} "
                         f"of {len(question['turns'])} (remove the line to answer it again)")


def _answer_turns(sampler, questions: list[dict], temperature: float, num_choices: int,
                  **kw) -> list[list[list[str]]]:
    """[question][choice][turn] answers: turn j of every conversation that has one in one
    sampler call, its prompt the chat template over the conversation so far."""
    convs = [(q, c, []) for q in questions for c in range(num_choices)]  # (question, choice, msgs)
    answers = [[] for _ in convs]
    for j in range(max(len(q["turns"]) for q in questions)):
        live = [i for i, (q, _, _) in enumerate(convs) if j < len(q["turns"])]
        for i in live:
            convs[i][2].append({"role": "user", "content": convs[i][0]["turns"][j]})
        out = sampler([list(convs[i][2]) for i in live], temperature=temperature,
                      ids=[json.dumps([convs[i][0]["question_id"], convs[i][1], j]) for i in live],
                      **kw)
        for i, texts in zip(live, out.texts):
            answers[i].append(texts[0].strip())
            convs[i][2].append({"role": "assistant", "content": answers[i][-1]})
    return [answers[k * num_choices:(k + 1) * num_choices] for k in range(len(questions))]


def write_mt_bench(sampler, questions: Sequence[dict], path: str, *, model_id: str,
                   max_new_tokens: int = 1024, seed: int = 0, num_choices: int = 1,
                   top_k: int = 50, top_p: float = 1.0,
                   batch_size: int | None = None) -> list[dict]:
    """MT-Bench answers (FastChat's format) at `path`, resuming a partial file; returns the
    answers to `questions` in their order.

    num_choices: answers per question (FastChat's --num-choices, default 1). top_k, top_p:
    used when a category's temperature samples (transformers' generate defaults: 50, 1.0).
    """
    model_id = _name(model_id, "model_id")
    if isinstance(num_choices, bool) or not (isinstance(num_choices, int) and num_choices >= 1):
        raise ValueError(f"num_choices must be an int >= 1, got {num_choices!r}")
    questions = _check_questions([(f"question {i}", q) for i, q in enumerate(questions)])
    if not questions:
        raise ValueError("write_mt_bench: no questions")
    _chat_template(sampler, True, "write_mt_bench")
    path = os.fspath(path)
    kept = read_answers(path, model_id)
    for q in questions:
        if q["question_id"] in kept:
            _check_kept(*kept[q["question_id"]], q, num_choices)
    rows = {qid: row for qid, (_, row) in kept.items()}
    groups: dict[float, list[dict]] = {}
    for q in questions:
        if q["question_id"] not in rows:
            groups.setdefault(mt_bench_temperature(q), []).append(q)

    def write():
        lines = [json.dumps(rows[qid]) + "\n" for qid in sorted(rows, key=_order)]
        io.write_atomic(path, "".join(lines).encode())

    for temperature, group in sorted(groups.items()):
        # The filters do nothing when greedy: left out, greedy calls share compiled programs.
        filters = dict(top_k=top_k, top_p=top_p) if temperature else {}
        answers = _answer_turns(sampler, group, temperature, num_choices,
                                max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size,
                                **filters)
        for q, choices in zip(group, answers):
            rows[q["question_id"]] = {
                "question_id": q["question_id"],
                "answer_id": answer_id(model_id, q["question_id"], seed),
                "model_id": model_id,
                "choices": [{"index": c, "turns": turns} for c, turns in enumerate(choices)],
                "tstamp": time.time()}
        write()
    if not groups:
        write()
    return [rows[q["question_id"]] for q in questions]


def _checkpoint_settings(directory: str) -> tuple[int | None, dict]:
    """(its position table, {top_k, top_p} its generation_config.json sets) of a checkpoint."""
    config = os.path.join(directory, "config.json")
    cfg = io.read_json_object(config) if os.path.exists(config) else {}
    positions = cfg.get("max_position_embeddings") or cfg.get("n_positions")
    gen_path = os.path.join(directory, "generation_config.json")
    gen = io.read_json_object(gen_path) if os.path.exists(gen_path) else {}
    return positions, {k: gen[k] for k in ("top_k", "top_p") if gen.get(k) is not None}


def main(argv: Sequence[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m jaxalign.sampling.answers",
                                description=__doc__.split("\n")[0])
    p.add_argument("bench", choices=("alpaca_eval", "mt_bench"))
    p.add_argument("--model", required=True, help="a Hugging Face checkpoint directory")
    p.add_argument("--questions", required=True, help="the prompt file (JSON list or JSONL)")
    p.add_argument("--out", required=True, help="the answer file to write")
    p.add_argument("--model_id", required=True, help="the model's name in the answer file")
    p.add_argument("--max_new_tokens", type=int, help="default: 2048 alpaca_eval, 1024 mt_bench")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=32, help="prompts per compiled batch")
    p.add_argument("--max_len", type=int, default=4096,
                   help="prompt + answer tokens per row (the KV cache); at most the model's")
    p.add_argument("--devices", type=int, default=0, help="use the first N devices (0: all)")
    p.add_argument("--fsdp", type=int, default=1, help="devices a copy of the weights spans")
    p.add_argument("--temperature", type=float, default=0.7, help="alpaca_eval only")
    p.add_argument("--top_p", type=float, default=1.0, help="alpaca_eval only")
    p.add_argument("--dataset", default="helpful_base",
                   help="alpaca_eval: the dataset of records without one")
    args = p.parse_args(argv)
    load = load_alpaca_eval if args.bench == "alpaca_eval" else load_mt_bench
    records = load(args.questions)  # bad input stops here, before the weights load
    positions, generation = _checkpoint_settings(args.model)
    mesh = sharding.make_mesh(fsdp=args.fsdp, devices=jax.devices()[:args.devices or None])
    sampler = Sampler.from_pretrained(args.model, mesh=mesh,
                                      max_len=min(args.max_len, positions or args.max_len),
                                      batch_size=args.batch_size)
    if args.bench == "alpaca_eval":
        return write_alpaca_eval(sampler, records, args.out, generator=args.model_id,
                                 dataset=args.dataset, max_new_tokens=args.max_new_tokens or 2048,
                                 temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    return write_mt_bench(sampler, records, args.out, model_id=args.model_id,
                          max_new_tokens=args.max_new_tokens or 1024, seed=args.seed,
                          **generation)


if __name__ == "__main__":
    main()
