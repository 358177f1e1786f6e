"""IFEval-style verifiable instructions (Zhou et al. 2023, arXiv 2311.07911) and their judge (CGPO).

    judge = InstructionJudge()
    meta = [{"instructions": [{"id": "punctuation:no_comma", "kwargs": {}},
                              {"id": "length_constraints:number_words",
                               "kwargs": {"num_words": 50, "relation": "less than"}}]}]
    out = judge(prompts, completions, meta)   # passed: follows all; scores: fraction followed

Each instruction type (24: all of IFEval's 25 but `language:response_language`) is a checker
`(response, **kwargs) -> bool` in `INSTRUCTIONS`, keyed by IFEval's ids, with IFEval's semantics (google-research `instruction_following_eval`,
`instructions.py`); its arguments are keyword-only, typed, and all required: `check_kwargs`
validates them (unknown id, unknown / missing / wrong-typed / out-of-range argument) and raises an
`InstructionError` naming the id and the argument. A `None` argument counts as absent (the
Hugging Face copy of IFEval pads every kwargs dict with `None`s); IFEval draws a random value
there, we refuse to guess.

Written offline, without NLTK or langdetect; where IFEval used them:
- sentences (`length_constraints:number_sentences`): `split_sentences`, a regex splitter in place
  of NLTK's punkt (documented there); counts can differ from punkt on abbreviations;
- words: `\\w+` runs, exactly IFEval's `RegexpTokenizer(r"\\w+")`; the words of
  `change_case:capital_word_frequency` are `\\w+` runs joined by hyphens or apostrophes (NLTK's
  `word_tokenize` also keeps hyphenated words whole, but splits "DON'T" into "DO", "N'T");
- `change_case:english_capital` / `english_lowercase` check the case only, not that the text is
  English (IFEval adds a langdetect call); `language:response_language` is not registered (it
  needs a language-identification model).
- Keywords are matched literally (IFEval passes them to `re` unescaped).
Strict mode as IFEval: an empty (whitespace-only) response follows nothing. Loose mode
(`loose=True`, IFEval's `test_instruction_following_loose`): an instruction is followed if any of
8 variants follows it: the response with its first line, last line or both removed, each with and
without every `*`.
"""

from __future__ import annotations

import collections
import json
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import numpy as np

from jaxalign.reward.judges import Judge, Verdicts

Relation = Literal["less than", "at least"]


class InstructionError(ValueError):
    """A bad instruction: unknown id, or an unknown, missing or ill-typed argument (named)."""


INSTRUCTIONS: dict[str, Callable[..., bool]] = {}  # IFEval id -> checker(response, **kwargs)
_PARAMS: dict[str, dict[str, object]] = {}  # id -> {argument: type hint}, fixed at registration
_REQUIRES: dict[str, tuple[Callable[[dict], bool], str]] = {}  # id -> (cross-argument rule, what)


def instruction(instruction_id: str, requires: tuple[Callable[[dict], bool], str] | None = None):
    """Registers a checker under `instruction_id`; its keyword-only hints are its argument types."""
    def register(fn):
        hints = typing.get_type_hints(fn)
        _PARAMS[instruction_id] = {k: hints[k] for k in hints if k not in ("response", "return")}
        INSTRUCTIONS[instruction_id] = fn
        if requires is not None:
            _REQUIRES[instruction_id] = requires
        return fn
    return register


def _compare(count: int, relation: Relation, threshold: int) -> bool:
    return count < threshold if relation == "less than" else count >= threshold


# ---- text units ------------------------------------------------------------------------------

_WORD = re.compile(r"\w+")
_HYPHENATED_WORD = re.compile(r"\w+(?:[-'’]\w+)*")
_TITLES = frozenset("mr mrs ms dr prof st capt lt vs".split())  # a name follows: never an end
_ABBREVIATIONS = frozenset("etc inc ltd co jr sr approx fig dept".split())  # end before a capital
# a run of terminators, then closing quotes/brackets, then whitespace or the end
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s|$)")


def count_words(text: str) -> int:
    """IFEval's word count: runs of `\\w` characters."""
    return len(_WORD.findall(text))


def split_sentences(text: str) -> list[str]:
    """Sentences of `text` by regex (NLTK punkt's stand-in): a sentence ends at a run of `.`, `!`
    or `?` (closing quotes or brackets may follow) before whitespace or the end of the text,
    except a single `.` right after a one-letter word (initials, "e.g.", "U.S.") or a title
    ("Mr.", "Dr.", "vs.", ...), and after another listed abbreviation ("etc.", "Inc.", ...)
    unless the next word is capitalised. Decimals ("3.14") never end a sentence (no space follows
    the dot). Pieces without a letter or digit (a lone "...") are dropped; the text after the
    last terminator is a sentence if it has one."""
    out, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        if (m.group().rstrip("\"'”’)]") == "." and m.start() > start
                and text[m.start() - 1].isalnum()):
            word = _WORD.findall(text[max(start, m.start() - 20):m.start()])[-1].lower()
            nxt = text[m.end():].lstrip()[:1]
            if len(word) == 1 or word in _TITLES or (word in _ABBREVIATIONS
                                                     and not nxt.isupper()):
                continue
        out.append(text[start:m.end()].strip())
        start = m.end()
    out.append(text[start:].strip())
    return [s for s in out if _WORD.search(s)]


def count_sentences(text: str) -> int:
    """Number of sentences by `split_sentences`."""
    return len(split_sentences(text))


# ---- keywords --------------------------------------------------------------------------------

@instruction("keywords:existence")
def keywords_existence(response: str, *, keywords: list[str]) -> bool:
    """Every keyword occurs (case-insensitive substring)."""
    return all(re.search(re.escape(k), response, re.IGNORECASE) for k in keywords)


@instruction("keywords:frequency")
def keywords_frequency(response: str, *, keyword: str, frequency: int, relation: Relation) -> bool:
    """Occurrences of `keyword` (case-insensitive substring, stripped) vs `frequency`."""
    n = len(re.findall(re.escape(keyword.strip()), response, re.IGNORECASE))
    return _compare(n, relation, frequency)


@instruction("keywords:forbidden_words")
def keywords_forbidden_words(response: str, *, forbidden_words: list[str]) -> bool:
    """No forbidden word occurs as a whole word (case-insensitive)."""
    return not any(re.search(rf"\b{re.escape(w)}\b", response, re.IGNORECASE)
                   for w in forbidden_words)


@instruction("keywords:letter_frequency",
             requires=(lambda kw: len(kw["letter"]) == 1 and kw["letter"].isalpha(),
                       "letter must be a single letter"))
def keywords_letter_frequency(response: str, *, letter: str, let_frequency: int,
                              let_relation: Relation) -> bool:
    """Occurrences of `letter` (either case) vs `let_frequency`."""
    n = collections.Counter(response.lower())[letter.lower()]
    return _compare(n, let_relation, let_frequency)


# ---- length ----------------------------------------------------------------------------------

@instruction("length_constraints:number_words")
def number_words(response: str, *, num_words: int, relation: Relation) -> bool:
    """`count_words(response)` vs `num_words`."""
    return _compare(count_words(response), relation, num_words)


@instruction("length_constraints:number_sentences")
def number_sentences(response: str, *, num_sentences: int, relation: Relation) -> bool:
    """`count_sentences(response)` vs `num_sentences`."""
    return _compare(count_sentences(response), relation, num_sentences)


@instruction("length_constraints:number_paragraphs")
def number_paragraphs(response: str, *, num_paragraphs: int) -> bool:
    """Exactly `num_paragraphs` paragraphs separated by `***`; an empty paragraph is allowed only
    at either end (then not counted), anywhere else it fails."""
    parts = re.split(r"\s?\*\*\*\s?", response)
    inner_empty = [not p.strip() for p in parts[1:-1]]
    if any(inner_empty):
        return False
    return sum(bool(p.strip()) for p in parts) == num_paragraphs


@instruction("length_constraints:nth_paragraph_first_word",
             requires=(lambda kw: 1 <= kw["nth_paragraph"] <= kw["num_paragraphs"],
                       "nth_paragraph must be in [1, num_paragraphs]"))
def nth_paragraph_first_word(response: str, *, num_paragraphs: int, nth_paragraph: int,
                             first_word: str) -> bool:
    """Exactly `num_paragraphs` non-empty paragraphs separated by "\\n\\n", and paragraph
    `nth_paragraph` (1-based, counted over the raw split as IFEval does) starts with
    `first_word` (case-insensitive; leading quotes and trailing punctuation ignored)."""
    parts = response.split("\n\n")
    count = sum(bool(p.strip()) for p in parts)
    if nth_paragraph > count or not parts[nth_paragraph - 1].strip():
        return False
    word = parts[nth_paragraph - 1].split()[0].lstrip("'").lstrip('"')
    word = re.split(r"[.,?!'\"]", word, maxsplit=1)[0].lower()
    return count == num_paragraphs and word == first_word.lower()


# ---- content ---------------------------------------------------------------------------------

@instruction("detectable_content:number_placeholders")
def number_placeholders(response: str, *, num_placeholders: int) -> bool:
    """At least `num_placeholders` square-bracket placeholders such as [address]."""
    return len(re.findall(r"\[.*?\]", response)) >= num_placeholders


@instruction("detectable_content:postscript")
def postscript(response: str, *, postscript_marker: str) -> bool:
    """The marker occurs (case-insensitive); "P.S." and "P.P.S" allow a space after each dot."""
    marker = postscript_marker.strip()
    pattern = {"P.P.S": r"p\.\s?p\.\s?s", "P.S.": r"p\.\s?s\."}.get(marker, re.escape(marker))
    return re.search(pattern, response, re.IGNORECASE) is not None


# ---- format ----------------------------------------------------------------------------------

@instruction("detectable_format:number_bullet_lists")
def number_bullet_lists(response: str, *, num_bullets: int) -> bool:
    """Exactly `num_bullets` lines starting (after spaces) with `*` (not `**`) or `-`."""
    stars = re.findall(r"^\s*\*[^*].*$", response, re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", response, re.MULTILINE)
    return len(stars) + len(dashes) == num_bullets


@instruction("detectable_format:constrained_response")
def constrained_response(response: str) -> bool:
    """Contains "My answer is yes.", "My answer is no." or "My answer is maybe."."""
    return any(f"My answer is {a}." in response for a in ("yes", "no", "maybe"))


@instruction("detectable_format:number_highlighted_sections")
def number_highlighted_sections(response: str, *, num_highlights: int) -> bool:
    """At least `num_highlights` non-empty one-line *highlights* (each **bold** counts once)."""
    single = [h for h in re.findall(r"\*[^\n*]*\*", response) if h.strip("*").strip()]
    double = [h for h in re.findall(r"\*\*[^\n*]*\*\*", response) if h[2:-2].strip()]
    return len(single) + len(double) >= num_highlights


@instruction("detectable_format:multiple_sections")
def multiple_sections(response: str, *, section_spliter: str, num_sections: int) -> bool:
    """At least `num_sections` "<spliter> <number>" markers (case-sensitive), e.g. "Section 2"."""
    marker = re.escape(section_spliter.strip())
    return len(re.split(rf"\s?{marker}\s?\d+\s?", response)) - 1 >= num_sections


@instruction("detectable_format:json_format")
def json_format(response: str) -> bool:
    """The whole response parses as JSON, optionally inside ``` or ```json fences."""
    text = response.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):  # IFEval's chain of removeprefix
        text = text.removeprefix(fence)
    text = text.removesuffix("```").strip()
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


@instruction("detectable_format:title")
def title(response: str) -> bool:
    """A one-line title in double angular brackets, such as <<poem of joy>>."""
    return any(t.strip("<>").strip() for t in re.findall(r"<<[^\n]+>>", response))


# ---- combination, start/end, case, punctuation -----------------------------------------------

@instruction("combination:two_responses")
def two_responses(response: str) -> bool:
    """Two different non-empty responses separated by "******" (empty parts only at the ends)."""
    parts = response.split("******")
    if any(not p.strip() for p in parts[1:-1]):
        return False
    kept = [p.strip() for p in parts if p.strip()]
    return len(kept) == 2 and kept[0] != kept[1]


@instruction("combination:repeat_prompt")
def repeat_prompt(response: str, *, prompt_to_repeat: str) -> bool:
    """Starts with `prompt_to_repeat` (case-insensitive; surrounding whitespace ignored)."""
    return response.strip().lower().startswith(prompt_to_repeat.strip().lower())


@instruction("startend:end_checker")
def end_checker(response: str, *, end_phrase: str) -> bool:
    """Ends with `end_phrase` (case-insensitive; whitespace and enclosing `"` ignored)."""
    return response.strip().strip('"').lower().endswith(end_phrase.strip().lower())


@instruction("startend:quotation")
def quotation(response: str) -> bool:
    """Wrapped in double quotation marks (after stripping whitespace)."""
    text = response.strip()
    return len(text) > 1 and text[0] == '"' and text[-1] == '"'


@instruction("change_case:english_lowercase")
def english_lowercase(response: str) -> bool:
    """No capital letters, and at least one cased letter (`str.islower`); English not checked."""
    return response.islower()


@instruction("change_case:english_capital")
def english_capital(response: str) -> bool:
    """No lowercase letters, and at least one cased letter (`str.isupper`); English not checked."""
    return response.isupper()


@instruction("change_case:capital_word_frequency")
def capital_word_frequency(response: str, *, capital_frequency: int,
                           capital_relation: Relation) -> bool:
    """Words in all capitals (hyphenated words are one word) vs `capital_frequency`."""
    n = sum(w.isupper() for w in _HYPHENATED_WORD.findall(response))
    return _compare(n, capital_relation, capital_frequency)


@instruction("punctuation:no_comma")
def no_comma(response: str) -> bool:
    """No ASCII comma."""
    return "," not in response


# ---- arguments, checks, the judge ------------------------------------------------------------

def _check_arg(where: str, name: str, value, hint) -> object:
    if typing.get_origin(hint) is Literal:
        if value not in typing.get_args(hint):
            raise InstructionError(f"{where}: argument {name!r} must be one of "
                                   f"{typing.get_args(hint)}, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise InstructionError(f"{where}: argument {name!r} must be a non-negative int, got "
                                   f"{value!r} ({type(value).__name__})")
        return int(value)
    if hint is str:
        if not isinstance(value, str) or not value.strip():
            raise InstructionError(f"{where}: argument {name!r} must be a non-empty str, got "
                                   f"{value!r} ({type(value).__name__})")
        return value
    assert hint == list[str], hint  # the only other argument type in use
    if (isinstance(value, str) or not isinstance(value, Sequence) or not value
            or not all(isinstance(v, str) and v.strip() for v in value)):
        raise InstructionError(f"{where}: argument {name!r} must be a non-empty list of "
                               f"non-empty str, got {value!r}")
    return list(value)


def check_kwargs(instruction_id: str, kwargs: Mapping | None, where: str = "") -> dict:
    """The validated keyword arguments of `instruction_id` (`None` values dropped), or an
    InstructionError naming `where`, the id and the argument at fault."""
    where = f"{where}instruction {instruction_id!r}"
    if instruction_id not in INSTRUCTIONS:
        raise InstructionError(f"{where}: unknown instruction id; known: {sorted(INSTRUCTIONS)}")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise InstructionError(f"{where}: kwargs must be a dict, got {type(kwargs).__name__}")
    given = {k: v for k, v in (kwargs or {}).items() if v is not None}
    params = _PARAMS[instruction_id]
    for k in given:
        if k not in params:
            raise InstructionError(f"{where}: unknown argument {k!r}; expected {sorted(params)}")
    for k in params:
        if k not in given:
            raise InstructionError(f"{where}: missing argument {k!r}")
    out = {k: _check_arg(where, k, given[k], params[k]) for k in params}
    rule = _REQUIRES.get(instruction_id)
    if rule is not None and not rule[0](out):
        raise InstructionError(f"{where}: {rule[1]}, got {out}")
    return out


def _variants(response: str, loose: bool) -> list[str]:
    if not loose:
        return [response]
    lines = response.split("\n")
    cut = [response, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(),
           "\n".join(lines[1:-1]).strip()]
    return cut + [r.replace("*", "") for r in cut]


def parse_instructions(meta: Mapping, index: int = 0) -> list[tuple[str, dict]]:
    """`[(id, validated kwargs), ...]` from `meta["instructions"]` (`[{"id", "kwargs"}, ...]`) or
    from IFEval's `meta["instruction_id_list"]` with the parallel `meta["kwargs"]`; errors name
    response `index`, the position of the instruction, its id and the argument."""
    if "instructions" in meta:
        items = meta["instructions"]
        bad = [j for j, it in enumerate(items) if not isinstance(it, Mapping) or "id" not in it]
        if bad:
            raise InstructionError(f"response {index}: instruction {bad[0]} is not a dict with "
                                   f"an 'id', got {items[bad[0]]!r}")
        pairs = [(it["id"], it.get("kwargs")) for it in items]
    elif "instruction_id_list" in meta:
        ids = meta["instruction_id_list"]
        kws = meta.get("kwargs", [None] * len(ids))
        if len(kws) != len(ids):
            raise InstructionError(f"response {index}: {len(ids)} instruction ids but "
                                   f"{len(kws)} kwargs")
        pairs = list(zip(ids, kws))
    else:
        raise InstructionError(f"response {index}: metadata has no 'instructions' (nor IFEval's "
                               "'instruction_id_list')")
    if not pairs:
        raise InstructionError(f"response {index}: no instructions to check")
    return [(iid, check_kwargs(iid, kw, f"response {index}, position {j}: "))
            for j, (iid, kw) in enumerate(pairs)]


def follows(response: str, instructions: Sequence[tuple[str, dict]], *,
            loose: bool = False) -> list[bool]:
    """Per instruction (validated `(id, kwargs)` pairs), whether `response` follows it: IFEval's
    strict rule (a blank response follows nothing), or its loose rule (any of 8 variants)."""
    variants = [r for r in _variants(response, loose) if r.strip()]
    return [any(INSTRUCTIONS[iid](r, **kw) for r in variants) for iid, kw in instructions]


class InstructionJudge(Judge):
    """Passes a response iff it follows every instruction in its metadata (IFEval's
    prompt-level accuracy); scores: the fraction followed (instruction-level). Metadata per
    response: see `parse_instructions`. Every instruction of the batch is validated before any
    response is checked. `loose=True`: IFEval's loose variant (see the module docstring)."""

    def __init__(self, *, loose: bool = False, name: str = "instructions"):
        self.loose, self.name = loose, name

    def judge(self, prompts, completions, metadata):
        parsed = [parse_instructions(m, i) for i, m in enumerate(metadata)]
        results = [follows(c, p, loose=self.loose) for c, p in zip(completions, parsed)]
        passed = np.array([all(r) for r in results], bool)
        scores = np.array([sum(r) / len(r) for r in results], np.float32)
        return Verdicts(passed, scores)
