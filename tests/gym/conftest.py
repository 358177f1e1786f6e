"""One reference policy per test session, trained into a tmp dir and shared by every test."""

import pytest

from jaxalign.gym.policy import ReferenceConfig, reference_policy


@pytest.fixture(scope="session")
def ref_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("gym_cache"))


@pytest.fixture(scope="session")
def ref(ref_cache):
    return reference_policy(ReferenceConfig(), cache_dir=ref_cache)
