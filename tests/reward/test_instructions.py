"""IFEval-style instructions: every registered type passes one response and fails another (the
case table must cover the registry), bad kwargs name the id and argument before anything is
checked, the regex sentence splitter, loose mode, and the judge alone and in a mixture."""

import numpy as np
import pytest

from jaxalign.reward import MixtureOfJudges, RegexAnswerJudge
from jaxalign.reward.instructions import (INSTRUCTIONS, InstructionError, InstructionJudge,
                                          check_kwargs, count_words, follows, split_sentences)

LT, AL = "less than", "at least"
TEN_WORDS = "one two three four five six seven eight nine ten"

# id -> (kwargs, a response that follows it, one that does not); each failing response breaks
# exactly the rule at stake (often at its boundary).
CASES = {
    "keywords:existence": (
        {"keywords": ["Paris", "river"]},
        "PARIS sits on a River.", "Paris is a city."),
    "keywords:frequency": (
        {"keyword": "cat", "frequency": 3, "relation": AL},
        "Cat, cat and CAT.", "cat and cat"),
    "keywords:forbidden_words": (
        {"forbidden_words": ["war", "peace"]},
        "Warm words about software.", "No more WAR here."),
    "keywords:letter_frequency": (
        {"letter": "z", "let_frequency": 2, "let_relation": LT},
        "Zebra crossing.", "Zebra and zoo."),
    "length_constraints:number_words": (
        {"num_words": 10, "relation": AL},
        TEN_WORDS, "one two three four five six seven eight nine"),
    "length_constraints:number_sentences": (
        {"num_sentences": 3, "relation": LT},
        "Mr. Smith arrived at 3.14 p.m. today. He left!", "One. Two? Three!"),
    "length_constraints:number_paragraphs": (
        {"num_paragraphs": 2},
        "First part.\n***\nSecond part.\n***\n", "First.\n***\n***\nSecond."),
    "length_constraints:nth_paragraph_first_word": (
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "Hence"},
        "Intro here.\n\n\"Hence, the end.", "Intro here.\n\nThus, the end."),
    "detectable_content:number_placeholders": (
        {"num_placeholders": 2},
        "Dear [name], at [address].", "Dear [name], at home."),
    "detectable_content:postscript": (
        {"postscript_marker": "P.S."},
        "Thanks.\n\np. s. see you soon", "Thanks. PS see you"),
    "detectable_format:number_bullet_lists": (
        {"num_bullets": 2},
        "Items:\n* apple\n  - pear\n**not a bullet**", "* apple\n* pear\n- plum"),
    "detectable_format:constrained_response": (
        {}, "  My answer is maybe.  ", "My answer is probably."),
    "detectable_format:number_highlighted_sections": (
        {"num_highlights": 2},
        "*first* and **second**", "*first* and ** ** and *\nbroken*"),
    "detectable_format:multiple_sections": (
        {"section_spliter": "Section", "num_sections": 2},
        "Section 1\nintro\nSection 2\nbody", "Section 1\nintro\nsection 2\nbody"),
    "detectable_format:json_format": (
        {}, "```json\n{\"a\": [1, 2]}\n```", "Here it is: {\"a\": 1}"),
    "detectable_format:title": (
        {}, "<<Poem of Joy>>\nLa la la.", "<<  >>\nLa la la."),
    "combination:two_responses": (
        {}, "Yes.\n******\nNo.", "Yes.\n******\nYes."),
    "combination:repeat_prompt": (
        {"prompt_to_repeat": "Write a haiku."},
        "  write a HAIKU. Leaves fall...", "Sure! Write a haiku."),
    "startend:end_checker": (
        {"end_phrase": "Any other questions?"},
        "\"Done. any other questions?\"\n", "Any other questions? Bye."),
    "startend:quotation": (
        {}, "  \"Wrapped.\"\n", "\"Half wrapped."),
    "change_case:english_lowercase": (
        {}, "all lowercase, 123.", "almost all lowercase, I said."),
    "change_case:english_capital": (
        {}, "ALL CAPS, 123.", "ALL CAPS BUT ONE x."),
    "change_case:capital_word_frequency": (
        {"capital_frequency": 2, "capital_relation": AL},
        "THE WELL-KNOWN thing", "The WELL-KNOWN thing"),
    "punctuation:no_comma": (
        {}, "No commas here; none at all.", "One, two."),
}


def test_case_table_covers_the_registry():
    assert set(CASES) == set(INSTRUCTIONS)
    assert len(INSTRUCTIONS) >= 20


@pytest.mark.parametrize("iid", sorted(INSTRUCTIONS))
def test_every_type_passes_and_fails(iid):
    assert iid in CASES, f"instruction {iid!r} is registered with no test case"
    kwargs, good, bad = CASES[iid]
    kwargs = check_kwargs(iid, kwargs)
    assert INSTRUCTIONS[iid](good, **kwargs) is True
    assert INSTRUCTIONS[iid](bad, **kwargs) is False
    assert follows(good, [(iid, kwargs)]) == [True]
    assert follows(bad, [(iid, kwargs)]) == [False]
    assert follows("  \n", [(iid, kwargs)]) == [False]  # strict: a blank response follows nothing


@pytest.mark.parametrize("text, n", [
    ("Hello world. This is Mr. Smith! Is it 3.14? Yes...", 4),
    ("I like e.g. apples etc. and pears. He said \"go.\" Then left", 3),
    ("Apples, pears etc. They are good.", 2),
    ("U.S. growth slowed. OK", 2),
    ("...", 0),
    ("No terminator at all", 1),
], ids=["marks", "abbreviation-lower", "abbreviation-capital", "initials", "dots", "no-end"])
def test_split_sentences(text, n):
    assert len(split_sentences(text)) == n


def test_words_and_relations_at_the_boundary():
    assert count_words("it's a well-known fact_1!") == 6  # it s a well known fact_1
    ok = check_kwargs("length_constraints:number_words", {"num_words": 10, "relation": LT})
    assert INSTRUCTIONS["length_constraints:number_words"](TEN_WORDS[:-4], **ok)
    assert not INSTRUCTIONS["length_constraints:number_words"](TEN_WORDS, **ok)


def test_loose_mode_drops_first_last_line_and_stars():
    ids = [("startend:end_checker", {"end_phrase": "Bye."}),
           ("detectable_format:title", {})]
    text = "Sure, here you go:\n<<Note>> It ends. Bye.\n(I hope this helps!)"
    assert follows(text, ids) == [False, True]
    assert follows(text, ids, loose=True) == [True, True]
    stars = [("startend:quotation", {})]
    assert follows('**"Bold quote"**', stars) == [False]
    assert follows('**"Bold quote"**', stars, loose=True) == [True]


@pytest.mark.parametrize("iid, kwargs, what", [
    ("keywords:nonexistent", {}, r"'keywords:nonexistent': unknown instruction id"),
    ("keywords:frequency", {"keyword": "a", "frequency": 2},
     r"'keywords:frequency': missing argument 'relation'"),
    ("keywords:frequency", {"keyword": "a", "frequency": "2", "relation": AL},
     r"'keywords:frequency': argument 'frequency' must be a non-negative int, got '2' \(str\)"),
    ("keywords:frequency", {"keyword": "a", "frequency": True, "relation": AL},
     r"argument 'frequency' must be a non-negative int, got True \(bool\)"),
    ("length_constraints:number_words", {"num_words": -1, "relation": AL},
     r"argument 'num_words' must be a non-negative int"),
    ("length_constraints:number_words", {"num_words": 5, "relation": "at most"},
     r"argument 'relation' must be one of \('less than', 'at least'\), got 'at most'"),
    ("keywords:existence", {"keywords": "Paris"},
     r"'keywords:existence': argument 'keywords' must be a non-empty list of non-empty str"),
    ("keywords:existence", {"keywords": ["Paris", 3]}, r"argument 'keywords' must be a non-empty"),
    ("startend:end_checker", {"end_phrase": "  "},
     r"argument 'end_phrase' must be a non-empty str"),
    ("punctuation:no_comma", {"num_words": 3}, r"'punctuation:no_comma': unknown argument "
     r"'num_words'"),
    ("keywords:letter_frequency", {"letter": "ab", "let_frequency": 1, "let_relation": AL},
     r"'keywords:letter_frequency': letter must be a single letter"),
    ("length_constraints:nth_paragraph_first_word",
     {"num_paragraphs": 2, "nth_paragraph": 3, "first_word": "so"},
     r"nth_paragraph must be in \[1, num_paragraphs\]"),
], ids=["unknown-id", "missing", "str-for-int", "bool-for-int", "negative", "bad-relation",
        "str-for-list", "list-item", "blank-str", "unknown-arg", "letter", "nth-range"])
def test_bad_kwargs_name_the_instruction_and_argument(iid, kwargs, what):
    with pytest.raises(InstructionError, match=what):
        check_kwargs(iid, kwargs)


def test_none_kwargs_are_absent():
    # the Hugging Face copy of IFEval pads every kwargs dict with Nones
    assert check_kwargs("punctuation:no_comma", {"num_words": None, "relation": None}) == {}


def test_judge_validates_the_whole_batch_before_checking(monkeypatch):
    calls = []
    monkeypatch.setitem(INSTRUCTIONS, "punctuation:no_comma",
                        lambda response: calls.append(response) or True)
    meta = [{"instructions": [{"id": "punctuation:no_comma"}]},
            {"instructions": [{"id": "punctuation:no_comma"},
                              {"id": "keywords:frequency", "kwargs": {"keyword": "x"}}]}]
    with pytest.raises(InstructionError, match=r"response 1, position 1: instruction "
                       r"'keywords:frequency': missing argument 'frequency'"):
        InstructionJudge()(["p", "p"], ["a", "b"], meta)
    assert calls == []
    with pytest.raises(InstructionError, match=r"response 0: metadata has no 'instructions'"):
        InstructionJudge()(["p"], ["a"], [{"answer": 1}])
    with pytest.raises(InstructionError, match=r"response 0: 2 instruction ids but 1 kwargs"):
        InstructionJudge()(["p"], ["a"], [{"instruction_id_list": ["a", "b"], "kwargs": [{}]}])


def test_judge_batch_with_mixed_instructions_in_a_mixture():
    no_comma = {"id": "punctuation:no_comma"}
    lower = {"id": "change_case:english_lowercase", "kwargs": {}}
    words = {"id": "length_constraints:number_words",
             "kwargs": {"num_words": 8, "relation": LT}}
    completions = ["the answer is 4", "The answer is 4, clearly", "the answer is 5",
                   "the answer is 4", "THE ANSWER IS 4"]
    metadata = [
        {"answer": 4, "instructions": [no_comma, lower]},  # follows both
        {"answer": 4, "instructions": [no_comma, lower, words]},  # follows 1 of 3 (words)
        {"answer": 4, "instructions": [words]},  # follows; wrong answer
        # IFEval's own layout, with the Hugging Face copy's None padding
        {"answer": 4, "instruction_id_list": [words["id"], no_comma["id"]],
         "kwargs": [{**words["kwargs"], "keyword": None}, {"num_words": None}]},
        {"answer": 4, "instructions": [lower, no_comma]},  # follows 1 of 2
    ]
    judge = InstructionJudge()
    out = judge(["q"] * 5, completions, metadata)
    np.testing.assert_array_equal(out.passed, [True, False, True, True, False])
    np.testing.assert_allclose(out.scores, [1.0, 1 / 3, 1.0, 1.0, 0.5], rtol=1e-6)
    assert out.scores.dtype == np.float32
    moj = MixtureOfJudges([judge, RegexAnswerJudge()])(["q"] * 5, completions, metadata)
    assert moj.names == ("instructions", "final_answer")
    np.testing.assert_array_equal(moj.verdicts[:, 1], [True, True, False, True, True])
    np.testing.assert_array_equal(moj.passed, [True, False, False, True, False])
    np.testing.assert_allclose(moj.scores["instructions"], out.scores)
