"""Shared fixtures: one tiny tokenizer and one tiny Llama checkpoint per test session."""

import pytest

from jaxalign.models.hf import load_hf
from tests.sampling.helpers import EOS, EOT, make_tokenizer, save_checkpoint


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    return save_checkpoint(str(tmp_path_factory.mktemp("llama")), "llama", stop_ids=[EOS, EOT])


@pytest.fixture(scope="session")
def llama(llama_dir):
    """(cfg, params) of the tiny Llama, loaded through load_hf."""
    return load_hf(llama_dir)
