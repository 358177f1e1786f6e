"""Answer files: MT-Bench answers as FastChat writes them (every turn, the second prompt holding
the first answer through the chat template, per-category temperatures, one sampler call per
temperature per turn, resume), AlpacaEval's model-outputs JSON, the command, bad input."""

import json
import re
import types

import pytest

from jaxalign.sampling import Sampler, answers
from tests.sampling.helpers import make_tokenizer

# Only words of the tiny vocabulary, so a rendered conversation tokenizes without <unk>.
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
                 "{{ ' tell me ' }}{% else %}{{ ' fine ' }}{% endif %}{{ m['content'] }}"
                 "{% if m['role'] == 'assistant' %}{{ ' ' + eos_token }}{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}{{ ' fine' }}{% endif %}")
QUESTIONS = [
    {"question_id": 81, "category": "writing", "turns": ["one cat", "how are you"]},
    {"question_id": 111, "category": "math", "turns": ["one two three", "four five"],
     "reference": ["five"]},
    {"question_id": 121, "category": "coding", "turns": ["the dog ran fast"]},  # one turn
]
NEW = 5  # new tokens per answer
FIELDS = ["question_id", "answer_id", "model_id", "choices", "tstamp"]


@pytest.fixture(scope="module")
def chat_tokenizer():
    tok = make_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    return tok


class Spy:
    """A Sampler that records each call: its keyword arguments, the prompt token ids the
    sampler encoded and the texts it returned."""

    def __init__(self, sampler):
        self.sampler, self.tokenizer, self.calls = sampler, sampler.tokenizer, []

    def __call__(self, prompts, **kw):
        out = self.sampler(prompts, **kw)
        self.calls.append(dict(prompts=prompts, kw=kw, tokens=out.prompt_tokens,
                               texts=[t[0] for t in out.texts]))
        return out


@pytest.fixture(scope="module")
def sampler(llama, chat_tokenizer):
    cfg, params = llama
    # One prompt per batch and one prompt bucket: two compiled programs (greedy, T = 0.7).
    return Sampler(cfg, params, chat_tokenizer, max_len=40, buckets=(32,), batch_size=1,
                   stop_ids=())


def run_mt_bench(sampler, path, seed=0, questions=QUESTIONS):
    spy = Spy(sampler)
    rows = answers.write_mt_bench(spy, questions, str(path), model_id="tiny", seed=seed,
                                  max_new_tokens=NEW)
    return spy, rows


def read_lines(path):
    with open(path) as fh:
        return [json.loads(line) for line in fh]


@pytest.fixture(scope="module")
def mt_run(sampler, tmp_path_factory):
    path = tmp_path_factory.mktemp("mt") / "tiny.jsonl"
    spy, rows = run_mt_bench(sampler, path)
    return spy, rows, path


def test_mt_bench_answers_every_turn_the_second_prompt_holding_the_first_answer(
        mt_run, chat_tokenizer):
    spy, rows, path = mt_run
    lines = read_lines(path)
    assert [r["question_id"] for r in lines] == [81, 111, 121]  # sorted, as reorg_answer_file
    assert lines == sorted(rows, key=lambda r: r["question_id"])
    for row, q in zip(lines, sorted(QUESTIONS, key=lambda q: q["question_id"])):
        assert list(row) == FIELDS and row["model_id"] == "tiny"
        assert row["answer_id"] == answers.answer_id("tiny", q["question_id"], 0)
        assert len(row["answer_id"]) == 22 and set(row["answer_id"]) <= set(
            answers.SHORTUUID_ALPHABET)
        assert isinstance(row["tstamp"], float)
        [choice] = row["choices"]
        assert choice["index"] == 0 and len(choice["turns"]) == len(q["turns"])
        assert all(t and t == t.strip() for t in choice["turns"])
    # One call per temperature per turn: greedy (math, coding) first, then writing at 0.7.
    firsts = [[m[0]["content"] for m in c["prompts"]] for c in spy.calls]
    assert firsts == [["one two three", "the dog ran fast"], ["one two three"], ["one cat"],
                      ["one cat"]]
    assert [c["kw"]["temperature"] for c in spy.calls] == [0.0, 0.0, 0.7, 0.7]
    assert spy.calls[2]["kw"]["top_k"] == 50 and "top_k" not in spy.calls[0]["kw"]
    by_id = {r["question_id"]: r["choices"][0]["turns"] for r in lines}
    for call, qid in ((spy.calls[1], 111), (spy.calls[3], 81)):  # the second turns
        q = next(q for q in QUESTIONS if q["question_id"] == qid)
        first = by_id[qid][0]
        assert call["prompts"][0] == [{"role": "user", "content": q["turns"][0]},
                                      {"role": "assistant", "content": first},
                                      {"role": "user", "content": q["turns"][1]}]
        seen = chat_tokenizer.decode(call["tokens"][0])  # what the model was given
        assert seen == chat_tokenizer.apply_chat_template(call["prompts"][0], tokenize=False,
                                                          add_generation_prompt=True)
        assert f"fine {first} </s> tell me {q['turns'][1]} fine" in seen
        assert call["texts"][0].strip() == by_id[qid][1]


def test_greedy_categories_ignore_the_seed(mt_run, sampler, tmp_path):
    _, rows0, _ = mt_run
    _, rows1 = run_mt_bench(sampler, tmp_path / "seed1.jsonl", seed=1)
    for r0, r1 in zip(rows0, rows1):
        assert r0["answer_id"] != r1["answer_id"]
        if r0["question_id"] != 81:  # math and coding: temperature 0, greedy
            assert r0["choices"] == r1["choices"]


def test_resume_keeps_present_answers_and_answers_the_rest(mt_run, sampler, tmp_path):
    _, rows, _ = mt_run
    kept = dict(rows[1], answer_id="kept", choices=[{"index": 0, "turns": ["x", "y"]}])
    path = tmp_path / "partial.jsonl"
    path.write_text(json.dumps(kept) + "\n")
    spy, resumed = run_mt_bench(sampler, path)
    assert resumed[1] == kept
    asked = {m[0]["content"] for c in spy.calls for m in c["prompts"]}
    assert asked == {"one cat", "the dog ran fast"}  # question 111 was not asked again
    for fresh, again in zip(rows, resumed):
        if fresh["question_id"] != 111:  # keys per question: the same answers, any batch
            assert fresh["choices"] == again["choices"]
    written = path.read_bytes()
    spy, _ = run_mt_bench(sampler, path)  # complete: nothing to sample, nothing changes
    assert spy.calls == [] and path.read_bytes() == written


def test_alpaca_eval_file_is_a_list_of_the_four_fields_in_input_order(sampler, chat_tokenizer,
                                                                     tmp_path):
    records = [{"instruction": "how are you", "dataset": "koala", "output": "old",
                "generator": "someone"},
               {"instruction": "tell me one two"},
               {"instruction": "the cat sat on the mat", "dataset": "oasst"}]
    src = tmp_path / "eval.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert answers.load_alpaca_eval(str(src)) == records
    spy, out = Spy(sampler), tmp_path / "outputs.json"
    answers.write_alpaca_eval(spy, answers.load_alpaca_eval(str(src)), str(out),
                              generator="tiny", temperature=0.0, max_new_tokens=NEW)
    with open(out) as fh:
        rows = json.load(fh)
    assert isinstance(rows, list)
    assert [list(r) for r in rows] == [["instruction", "output", "generator", "dataset"]] * 3
    assert [r["instruction"] for r in rows] == [r["instruction"] for r in records]
    assert [r["dataset"] for r in rows] == ["koala", "helpful_base", "oasst"]
    assert {r["generator"] for r in rows} == {"tiny"}
    [call] = spy.calls
    assert [r["output"] for r in rows] == [t.strip() for t in call["texts"]]
    assert chat_tokenizer.decode(call["tokens"][1]) == "<s> tell me tell me one two fine"


class Canned:
    """A Sampler whose answers are canned (no model): for the command's wiring."""

    def __init__(self, tokenizer):
        self.tokenizer, self.calls = tokenizer, []

    def __call__(self, prompts, **kw):
        self.calls.append(kw)
        return types.SimpleNamespace(texts=[[f" answer {len(self.calls)} "] for _ in prompts])


def test_command_loads_the_checkpoint_and_writes_both_files(chat_tokenizer, tmp_path,
                                                            monkeypatch):
    model = tmp_path / "ckpt"  # what the command reads itself; the weights are Sampler's
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"max_position_embeddings": 40}))
    (model / "generation_config.json").write_text(json.dumps({"top_k": 20, "top_p": 0.9}))
    loaded, fake = [], Canned(chat_tokenizer)

    class Loader:
        @staticmethod
        def from_pretrained(directory, **kw):
            loaded.append((directory, kw))
            return fake

    monkeypatch.setattr(answers, "Sampler", Loader)
    evalset, questions = tmp_path / "eval.json", tmp_path / "question.jsonl"
    evalset.write_text(json.dumps([{"instruction": "hello world", "dataset": "vicuna"}]))
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS[:2]))
    common = ["--model", str(model), "--model_id", "tiny", "--seed", "3"]
    rows = answers.main(["alpaca_eval", "--questions", str(evalset), "--out",
                         str(tmp_path / "outputs.json"), "--temperature", "0", *common])
    assert rows == [{"instruction": "hello world", "output": "answer 1", "generator": "tiny",
                     "dataset": "vicuna"}]
    assert json.loads((tmp_path / "outputs.json").read_text()) == rows
    assert fake.calls[0] == dict(max_new_tokens=2048, temperature=0.0, top_p=1.0, seed=3,
                                 batch_size=None)
    answers.main(["mt_bench", "--questions", str(questions), "--out",
                  str(tmp_path / "answers.jsonl"), "--max_new_tokens", "7", *common])
    assert [d for d, _ in loaded] == [str(model)] * 2
    kw = loaded[1][1]
    assert kw["max_len"] == 40 and kw["batch_size"] == 32 and kw["mesh"].size == 8
    # math (greedy) first, then writing: sampled with the checkpoint's top_k and top_p
    assert [c.get("top_k") for c in fake.calls[1:]] == [None, None, 20, 20]
    assert {(c["max_new_tokens"], c["seed"]) for c in fake.calls[1:]} == {(7, 3)}
    lines = read_lines(tmp_path / "answers.jsonl")
    assert [r["choices"][0]["turns"] for r in lines] == [["answer 4", "answer 5"],
                                                         ["answer 2", "answer 3"]]


class NoSampling:
    """Stands for a Sampler where the error must come before anything is sampled."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, *a, **kw):
        raise AssertionError("sampled before the input was checked")


Q1 = json.dumps({"question_id": 1, "category": "math", "turns": ["a", "b"]})
ANSWER = {"question_id": 1, "answer_id": "x", "model_id": "tiny", "tstamp": 0.0,
          "choices": [{"index": 0, "turns": ["a", "b"]}]}
# id: (file name, its text, what to run, the error type, the message as a regex; {f}: the file)
BAD = {
    "alpaca_record_without_instruction": (
        "q.json", '[{"instruction": "a"}, {"prompt": "b"}]', "alpaca",
        ValueError, "{f}: record 1: 'instruction' must be a non-empty string"),
    "alpaca_record_not_an_object": (
        "q.json", '["a"]', "alpaca", ValueError, "{f}: record 0: expected a JSON object"),
    "alpaca_bad_json_list": (
        "q.json", '[{"instruction": "a"},\n {oops}]', "alpaca", ValueError,
        "{f}:2: not valid JSON"),
    "alpaca_bad_jsonl_line": (
        "q.jsonl", '{"instruction": "a"}\n{"instruction": \n', "alpaca", ValueError,
        "{f}:2: not valid JSON"),
    "alpaca_empty_file": ("q.json", "\n", "alpaca", ValueError, "{f}: no records"),
    "alpaca_missing_file": (None, None, "alpaca", FileNotFoundError, "{f}: no such file"),
    "mt_no_turns": (
        "q.jsonl", '{"question_id": 1, "category": "math", "turns": []}', "mt",
        ValueError, r"{f}:1 \(question_id 1\): 'turns' must be a list of one or more"),
    "mt_turn_not_a_string": (
        "q.jsonl", Q1 + '\n{"question_id": 2, "turns": ["a", 3]}', "mt", ValueError,
        r"{f}:2 \(question_id 2\): 'turns'"),
    "mt_no_question_id": (
        "q.jsonl", '{"turns": ["a"]}', "mt", ValueError, "{f}:1: 'question_id' must be"),
    "mt_duplicate_question_id": (
        "q.jsonl", Q1 + "\n\n" + Q1, "mt", ValueError,
        "{f}:3: question_id 1 again \\(also at {f}:1\\)"),
    "mt_bad_json_line": ("q.jsonl", Q1 + "\n{", "mt", ValueError, "{f}:2: not valid JSON"),
    "resume_line_not_json": (
        "out.jsonl", json.dumps(ANSWER) + "\nnot json\n", "resume", ValueError,
        "{f}:2: not valid JSON"),
    "resume_not_an_answer": (
        "out.jsonl", '{"question_id": 1}', "resume", ValueError, "{f}:1: not an MT-Bench answer"),
    "resume_other_model": (
        "out.jsonl", json.dumps(dict(ANSWER, model_id="other")), "resume", ValueError,
        "{f}:1: an answer of model_id 'other', not 'tiny'"),
    "resume_wrong_turns": (
        "out.jsonl", json.dumps(dict(ANSWER, choices=[{"index": 0, "turns": ["a"]}])),
        "resume", ValueError, r"{f}:1: the kept answer to question_id 1 has 1 choices of \[1\]"),
    "python_record_without_instruction": (
        None, [{"instruction": "a"}, {"instruction": " "}], "alpaca_records", ValueError,
        "record 1: 'instruction' must be a non-empty string"),
    "python_question_with_one_bad_turn": (
        None, [{"question_id": "q", "turns": ["a", ""]}], "mt_questions", ValueError,
        r"question 0 \(question_id 'q'\): 'turns'"),
    "mt_without_chat_template": (
        None, [json.loads(Q1)], "mt_plain_tokenizer", ValueError,
        "write_mt_bench: the tokenizer has no chat_template"),
}


@pytest.mark.parametrize("fname, text, run, error, match", list(BAD.values()), ids=list(BAD))
def test_bad_input_names_the_file_and_line_or_record(fname, text, run, error, match, tmp_path,
                                                    chat_tokenizer):
    f = str(tmp_path / (fname or "missing.json"))
    if fname is not None:
        with open(f, "w") as fh:
            fh.write(text)
    fake = NoSampling(chat_tokenizer)
    calls = {
        "alpaca": lambda: answers.load_alpaca_eval(f),
        "mt": lambda: answers.load_mt_bench(f),
        "resume": lambda: answers.write_mt_bench(fake, [json.loads(Q1)], f, model_id="tiny"),
        "alpaca_records": lambda: answers.write_alpaca_eval(fake, text, f, generator="tiny"),
        "mt_questions": lambda: answers.write_mt_bench(fake, text, f, model_id="tiny"),
        "mt_plain_tokenizer": lambda: answers.write_mt_bench(
            NoSampling(make_tokenizer()), text, f, model_id="tiny"),
    }
    with pytest.raises(error, match=match.format(f=re.escape(f))):
        calls[run]()
