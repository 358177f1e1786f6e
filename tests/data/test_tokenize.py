"""The prompt/completion boundary, for a chat-template tokenizer and a plain one."""

import re

import numpy as np
import pytest

from jaxalign.data import BatchIterator, DataError, Encoder, load_dataset
from tests.data.helpers import assistant, user, write_jsonl

BOS, EOS = "<s>", "</s>"

UF_ROWS = [  # UltraFeedback-binarized style
    {"prompt": "What is two plus two?",
     "chosen": [user("What is two plus two?"), assistant("It is four.")],
     "rejected": [user("What is two plus two?"), assistant("The capital of France is Paris.")]},
    {"prompt": "ignored: the turns come from chosen",
     "chosen": [{"role": "system", "content": "Be brief."}, user("hi there"),
                assistant("Hello!"), user("What is the capital of France?"), assistant("Paris.")],
     "rejected": [{"role": "system", "content": "Be brief."}, user("hi there"),
                  assistant("Hello!"), user("What is the capital of France?"),
                  assistant("I am fine, thank you.")]},
]


def _loss_text(tok, batch, side, b):
    tokens, loss = batch[f"{side}_tokens"][b], batch[f"{side}_loss_mask"][b]
    return tok.decode(tokens[loss])


def test_chat_completion_mask_is_exactly_the_completion(chat_tokenizer, tmp_path):
    tok = chat_tokenizer
    ds, _ = load_dataset("preference", write_jsonl(tmp_path / "uf.jsonl", UF_ROWS), tok)
    batch = next(BatchIterator(ds, batch_size=2, shuffle=False))
    for b, row in enumerate(UF_ROWS):
        for side in ("chosen", "rejected"):
            # The template puts "\n" after EOS; it is not part of the completion.
            assert _loss_text(tok, batch, side, b) == row[side][-1]["content"] + EOS
            tokens, mask = batch[f"{side}_tokens"][b], batch[f"{side}_mask"][b]
            prompt = tokens[mask & ~batch[f"{side}_loss_mask"][b]]
            assert tok.decode(prompt) == tok.apply_chat_template(
                row[side][:-1], tokenize=False, add_generation_prompt=True)
            assert tokens[0] == tok.bos_token_id and tokens[1] != tok.bos_token_id
            # The mask is contiguous: prompt then completion, then padding.
            n = mask.sum()
            assert mask[:n].all() and not mask[n:].any()
            assert (tokens[n:] == tok.pad_token_id).all()


def test_chat_template_bos_is_not_doubled(chat_tokenizer):
    tok = chat_tokenizer
    text = tok.apply_chat_template([user("hi")], tokenize=False, add_generation_prompt=True)
    assert text.startswith(BOS)
    # What a naive pipeline would get: the tokenizer adds a second BOS.
    assert tok(text)["input_ids"][:2] == [tok.bos_token_id] * 2
    p, c = Encoder(tok).encode([user("hi")], assistant("Hello!"))
    assert p[0] == tok.bos_token_id and p[1] != tok.bos_token_id
    assert tok.decode(c) == "Hello!" + EOS


def test_plain_completion_mask_and_single_bos(plain_tokenizer, tmp_path):
    tok = plain_tokenizer
    prompt = "\n\nHuman: What is two plus two?\n\nAssistant:"
    rows = [
        {"prompt": prompt, "chosen": prompt + " It is four.", "rejected": prompt + " Paris."},
        # Raw HH-RLHF: no prompt field; it is split off at the last "\n\nAssistant:".
        {"chosen": "\n\nHuman: hi\n\nAssistant: Hello!\n\nHuman: sea?\n\nAssistant: It is blue.",
         "rejected": "\n\nHuman: hi\n\nAssistant: Hello!\n\nHuman: sea?\n\nAssistant: No."},
        # A prompt that already starts with the BOS text gets no second BOS.
        {"prompt": BOS + "Hello world", "chosen": ", how are you?", "rejected": " the sea"},
    ]
    completions = [(" It is four.", " Paris."), (" It is blue.", " No."),
                   (", how are you?", " the sea")]
    ds, _ = load_dataset("preference", write_jsonl(tmp_path / "hh.jsonl", rows), tok)
    batch = next(BatchIterator(ds, batch_size=3, shuffle=False))
    for b, (chosen, rejected) in enumerate(completions):
        assert _loss_text(tok, batch, "chosen", b) == chosen + EOS
        assert _loss_text(tok, batch, "rejected", b) == rejected + EOS
        tokens = batch["chosen_tokens"][b]
        assert tokens[0] == tok.bos_token_id and tokens[1] != tok.bos_token_id
    full = batch["chosen_tokens"][1][batch["chosen_mask"][1]]
    assert tok.decode(full) == BOS + rows[1]["chosen"] + EOS


def test_plain_tokenizer_without_bos_adds_none(plain_tokenizer):
    p, c = Encoder(plain_tokenizer, add_bos=False).encode("Hello world", ", how are you?")
    assert plain_tokenizer.bos_token_id not in p
    assert plain_tokenizer.decode(p + c) == "Hello world, how are you?" + EOS


def test_sft_and_prompt_kinds(chat_tokenizer, plain_tokenizer, tmp_path):
    rows = [{"messages": [user("hi there"), assistant("Hello! How can I help?")]},
            {"prompt": "What is two plus two?", "completion": " It is four."}]
    path = write_jsonl(tmp_path / "sft.jsonl", rows)
    ds, _ = load_dataset("sft", path, chat_tokenizer)
    batch = next(BatchIterator(ds, batch_size=2, shuffle=False))
    assert set(batch) == {"tokens", "mask", "loss_mask", "index"}
    texts = [chat_tokenizer.decode(batch["tokens"][b][batch["loss_mask"][b]]) for b in range(2)]
    assert texts == ["Hello! How can I help?" + EOS, " It is four." + EOS]
    # chat=True formats string rows with the template too.
    ds, _ = load_dataset("sft", path, chat_tokenizer, chat=True)
    assert chat_tokenizer.decode(ds[1]["prompt"]) == chat_tokenizer.apply_chat_template(
        [user("What is two plus two?")], tokenize=False, add_generation_prompt=True)

    rows = [{"messages": [user("hi there"), assistant("Hello!")]},  # answer dropped
            {"prompt": "The quick brown fox", "id": "fox"}]
    path = write_jsonl(tmp_path / "prompts.jsonl", rows)
    ds, _ = load_dataset("prompt", path, chat_tokenizer)
    batch = next(BatchIterator(ds, batch_size=2, shuffle=False))
    assert list(batch["id"]) == ["0", "fox"]  # default id: the row index
    assert not batch.keys() & {"loss_mask"}
    first = chat_tokenizer.decode(batch["tokens"][0][batch["mask"][0]])
    assert first == BOS + "<|user|>\nhi there\n<|assistant|>\n"
    ds, _ = load_dataset("prompt", path, plain_tokenizer, on_error="skip")
    assert len(ds) == 1 and plain_tokenizer.decode(ds[0]["prompt"]) == BOS + "The quick brown fox"


def test_prompt_not_a_prefix_names_the_line(plain_tokenizer, tmp_path):
    # "Hel" + "lo world": BPE merges "Hello" across the boundary.
    rows = [{"prompt": "Hel", "chosen": "lo world", "rejected": " the sea"}]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    expected = "^" + re.escape(f"{path}:1: prompt tokens are not a prefix")
    with pytest.raises(DataError, match=expected) as e:
        load_dataset("preference", path, plain_tokenizer)
    assert e.value.reason == "tokenization"
    ds, report = load_dataset("preference", path, plain_tokenizer, on_error="skip")
    assert len(ds) == 0 and report.skipped == {"tokenization": 1}


def test_messages_need_a_chat_template(plain_tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "uf.jsonl", UF_ROWS[:1])
    expected = "^" + re.escape(f"{path}:1: messages need a tokenizer with a chat_template")
    with pytest.raises(DataError, match=expected):
        load_dataset("preference", path, plain_tokenizer)


def test_records_are_int32(chat_tokenizer, tmp_path):
    ds, _ = load_dataset("preference", write_jsonl(tmp_path / "uf.jsonl", UF_ROWS),
                         chat_tokenizer)
    for r in ds:
        assert all(v.dtype == np.int32 for v in r.values())
    assert list(ds.lengths) == [len(r["prompt"]) + max(len(r["chosen"]), len(r["rejected"]))
                                for r in ds]
