"""Token ids for prompts and completions, with the prompt/completion boundary checked.

Chat examples (messages, or strings with `chat=True`) go through the tokenizer's chat template:
the prompt is rendered with the generation prompt, prompt+completion without, both tokenized
WITHOUT adding special tokens (templates emit their own BOS). Plain strings: prompt and
prompt+completion are tokenized, with BOS prepended when the tokenizer itself adds one. Either
way the prompt tokens must be a prefix of the full tokens (else a DataError naming the row),
and the completion is the rest, ending at its last EOS: tokens a template puts after the EOS
(e.g. "\\n") are dropped, and an EOS is appended when there is none. A leading run of BOS
tokens is cut to one.

Truncation follows the DPO reference (`tokenize_batch_element` in
eric-mitchell/direct-preference-optimization): if prompt + longer completion > max_length,
cut the prompt to max_prompt_length (keep_end: its last tokens; keep_start: its first); if
still too long, cut each completion to its first max_length - max_prompt_length tokens.
One deviation: keep_end keeps a leading BOS (the reference's GPT-2/Pythia had none). A pair
whose chosen and rejected ids are equal after tokenization and truncation would train with zero
gradient: it is a DataError "identical_tokens" (counted and skipped under on_error="skip").

`load_tokenizer_dir` loads a tokenizer from a local directory; its errors name the file.

A record is a dict of int32 arrays: {"prompt", "chosen", "rejected"} (preference),
{"prompt", "completion"} (sft), or {"prompt"} plus "id" (str) for prompts; records built from
generated token ids (generated.py) may also be {"prompt", "completions": [K arrays]} (group)
and carry scalar columns (batching.py).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from jaxalign import io
from jaxalign.data.errors import DataError

TRUNCATION_MODES = ("keep_end", "keep_start")

# Gemma-2-IT's chat template, verbatim from google/gemma-2-9b-it's tokenizer_config.json (the
# 2b and 27b IT models carry the same): BOS first, "<start_of_turn>user\n...<end_of_turn>\n",
# the assistant's role named "model", no system role (raises), roles must alternate. Its
# turns end with <end_of_turn> (id 107 in the real vocabulary), which generation_config.json
# lists as a stop id beside <eos> (eos_token_id [1, 107]).
GEMMA2_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)
_TOKENIZER_JSON = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")


def load_tokenizer_dir(directory: str):
    """A transformers tokenizer from a local directory (save_pretrained's files): nothing is
    downloaded and no remote code runs. Errors name the directory, and the file when one of
    its JSON files is not valid."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"tokenizer {directory!r}: no such directory (a local "
                                "tokenizer directory is needed; nothing is downloaded)")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(directory, trust_remote_code=False,
                                             local_files_only=True)
    except Exception as e:  # transformers and tokenizers raise many types
        found = sorted(os.listdir(directory))
        if not found:
            raise FileNotFoundError(f"tokenizer {directory!r}: the directory is empty "
                                    "(expected tokenizer.json, tokenizer_config.json)") from e
        _diagnose_tokenizer(directory, found, e)
        raise ValueError(f"tokenizer {directory!r} (holding {found[:8]}): cannot load it "
                         f"({type(e).__name__}: {e})") from e


def _diagnose_tokenizer(directory: str, found: list[str], err: Exception) -> None:
    """Raises an error naming the file that made loading fail, when one can be found."""
    for name in _TOKENIZER_JSON:
        path = os.path.join(directory, name)
        if name not in found:
            continue
        try:
            io.read_json_object(path)
        except ValueError as e:
            raise ValueError(str(e)) from err  # the file named; the loader's error as cause
    if "tokenizer.json" in found:
        from tokenizers import Tokenizer
        path = os.path.join(directory, "tokenizer.json")
        try:
            Tokenizer.from_file(path)
        except Exception as e:  # the Rust library raises a bare Exception
            raise ValueError(f"{path}: not a tokenizers file ({e})") from err


class Encoder:
    """Wraps a transformers tokenizer: `encode(prompt, completion)` -> (prompt ids, completion ids).

    chat: None uses the chat template for messages and plain text for strings; True also wraps
      strings as one user turn and one assistant turn; False rejects messages.
    add_bos: for plain text; None: whatever the tokenizer does with add_special_tokens=True.
    eos_id: the end-of-completion token; default the tokenizer's eos_token_id.
    """

    def __init__(self, tokenizer: Any, *, chat: bool | None = None, add_bos: bool | None = None,
                 eos_id: int | None = None):
        self.tokenizer = tokenizer
        self.chat = chat
        if chat and not getattr(tokenizer, "chat_template", None):
            raise ValueError("chat=True needs a tokenizer with a chat_template")
        self.bos_id = tokenizer.bos_token_id
        self.eos_id = tokenizer.eos_token_id if eos_id is None else eos_id
        if self.eos_id is None:
            raise ValueError("the tokenizer has no eos_token; pass eos_id")
        if add_bos is None:
            probe = tokenizer("a", add_special_tokens=True)["input_ids"]
            add_bos = self.bos_id is not None and probe[:1] == [self.bos_id]
        self.add_bos = add_bos
        pad = tokenizer.pad_token_id
        self.pad_id = self.eos_id if pad is None else pad  # padding is masked out anyway

    def _ids(self, text: str, bos: bool) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if bos and self.bos_id is not None and ids[:1] != [self.bos_id]:
            ids = [self.bos_id] + ids
        while self.bos_id is not None and ids[:2] == [self.bos_id, self.bos_id]:
            ids = ids[1:]
        return ids

    def _use_chat(self, prompt: Any, loc: str) -> bool:
        if isinstance(prompt, list):
            if self.chat is False:
                raise DataError(loc, "wrong_type", "messages given but chat=False")
            if not getattr(self.tokenizer, "chat_template", None):
                raise DataError(loc, "wrong_type", "messages need a tokenizer with a chat_template")
            return True
        return bool(self.chat)

    def _render(self, messages: list[dict], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt)

    def encode_prompt(self, prompt: str | list[dict], loc: str = "?") -> list[int]:
        if self._use_chat(prompt, loc):
            msgs = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            return self._ids(self._render(msgs, True), bos=False)
        return self._ids(prompt, bos=self.add_bos)

    def encode(self, prompt: str | list[dict], completion: str | dict,
               loc: str = "?") -> tuple[list[int], list[int]]:
        p = self.encode_prompt(prompt, loc)
        if self._use_chat(prompt, loc):
            msgs = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            if not isinstance(completion, dict):
                completion = {"role": "assistant", "content": completion}
            full = self._ids(self._render(msgs + [completion], False), bos=False)
        else:
            full = self._ids(prompt + completion, bos=self.add_bos)
        if full[:len(p)] != p:
            k = next((i for i, (a, b) in enumerate(zip(p, full)) if a != b), len(full))
            raise DataError(loc, "tokenization", f"prompt tokens are not a prefix of the "
                            f"prompt+completion tokens (first difference at token {k} of "
                            f"{len(p)}): the tokenizer merges across the boundary, or the "
                            "chat template renders the prompt differently before an answer")
        c = full[len(p):]
        if self.eos_id in c:  # drop what the template puts after the end of the turn
            c = c[:len(c) - c[::-1].index(self.eos_id)]
        else:
            c = c + [self.eos_id]
        return p, c


def cut_prompt(prompt: list[int], n: int, mode: str, bos_id: int | None = None) -> list[int]:
    """The prompt shortened to at most n tokens (keep_end keeps a leading BOS)."""
    if len(prompt) <= n:
        return prompt
    if mode == "keep_start":
        return prompt[:n]
    if mode != "keep_end":
        raise ValueError(f"truncation_mode must be one of {TRUNCATION_MODES}, got {mode!r}")
    if bos_id is not None and prompt[0] == bos_id and n > 1:
        return prompt[:1] + prompt[len(prompt) - (n - 1):]
    return prompt[len(prompt) - n:]


def truncate(prompt: list[int], completions: list[list[int]], *, max_length: int,
             max_prompt_length: int, truncation_mode: str = "keep_end",
             bos_id: int | None = None) -> tuple[list[int], list[list[int]]]:
    """The DPO reference's rules (module docstring); every completion is cut alike."""
    check_lengths(max_length, max_prompt_length, truncation_mode)
    longer = max(len(c) for c in completions)
    if len(prompt) + longer > max_length:
        prompt = cut_prompt(prompt, max_prompt_length, truncation_mode, bos_id)
    if len(prompt) + longer > max_length:
        completions = [c[:max_length - max_prompt_length] for c in completions]
    return prompt, completions


def check_lengths(max_length: int, max_prompt_length: int, truncation_mode: str) -> None:
    if not 0 < max_prompt_length < max_length:
        raise ValueError(f"need 0 < max_prompt_length < max_length, got {max_prompt_length}, "
                         f"{max_length}")
    if truncation_mode not in TRUNCATION_MODES:
        raise ValueError(f"truncation_mode must be one of {TRUNCATION_MODES}, "
                         f"got {truncation_mode!r}")


def _i32(ids: list[int]) -> np.ndarray:
    return np.asarray(ids, dtype=np.int32)


def tokenize_example(kind: str, ex: dict, enc: Encoder, *, max_length: int = 512,
                     max_prompt_length: int = 256, truncation_mode: str = "keep_end") -> dict:
    """One example from `readers.read_examples` -> one record (module docstring)."""
    loc = ex.get("location", "?")
    cut = dict(max_length=max_length, max_prompt_length=max_prompt_length,
               truncation_mode=truncation_mode, bos_id=enc.bos_id)
    if kind == "prompt":
        p = cut_prompt(enc.encode_prompt(ex["prompt"], loc), max_prompt_length, truncation_mode,
                       enc.bos_id)
        return {"prompt": _i32(p), "id": ex["id"]}
    if kind == "sft":
        p, c = enc.encode(ex["prompt"], ex["completion"], loc)
        p, (c,) = truncate(p, [c], **cut)
        return {"prompt": _i32(p), "completion": _i32(c)}
    if kind == "preference":
        p, c = enc.encode(ex["prompt"], ex["chosen"], loc)
        p2, r = enc.encode(ex["prompt"], ex["rejected"], loc)
        assert p == p2, loc  # the prompt is encoded the same way for both
        p, (c_cut, r_cut) = truncate(p, [c, r], **cut)
        if c_cut == r_cut:
            raise DataError(loc, "identical_tokens", _identical(c, r, len(c_cut), cut))
        return {"prompt": _i32(p), "chosen": _i32(c_cut), "rejected": _i32(r_cut)}
    raise ValueError(f"unknown kind {kind!r}")


def _identical(chosen: list[int], rejected: list[int], kept: int, cut: dict) -> str:
    """Why a pair whose texts differ has equal ids: the pair would train with zero gradient."""
    if chosen == rejected:
        return (f"chosen and rejected differ as text but tokenize to the same {len(chosen)} ids "
                "(e.g. the tokenizer normalizes whitespace or maps words to an unknown "
                "token): the pair would train with zero gradient")
    first = next((i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b),
                 min(len(chosen), len(rejected)))
    return (f"chosen and rejected are identical after truncation to {kept} completion tokens "
            f"(max_length={cut['max_length']}, max_prompt_length={cut['max_prompt_length']}): "
            f"they differ only from completion token {first} on, so the pair would train with "
            "zero gradient; raise max_length or drop the pair")


def record_length(kind: str, record: dict) -> int:
    """Tokens in the longest sequence the record makes (the prompt plus its longest completion)."""
    n = len(record["prompt"])
    if kind == "preference":
        return n + max(len(record["chosen"]), len(record["rejected"]))
    if kind == "sft":
        return n + len(record["completion"])
    if kind == "group":
        return n + max(len(c) for c in record["completions"])
    return n
