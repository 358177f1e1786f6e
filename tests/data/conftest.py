"""Fixtures: the tiny offline tokenizers of helpers.py."""

import pytest

from tests.data.helpers import make_tokenizer


@pytest.fixture(scope="session")
def chat_tokenizer():
    return make_tokenizer(chat=True)


@pytest.fixture(scope="session")
def plain_tokenizer():
    return make_tokenizer(chat=False)
