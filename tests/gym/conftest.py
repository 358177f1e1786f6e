"""One reference policy per test run, trained once into a directory every xdist worker shares
(a file lock makes the others wait for it) and loaded by each worker's tests."""

import pytest
from filelock import FileLock

from jaxalign.gym.policy import ReferenceConfig, reference_policy


@pytest.fixture(scope="session")
def ref_cache(tmp_path_factory, worker_id):
    # under xdist, the base temp's parent is the run's own directory, shared by its workers
    base = tmp_path_factory.getbasetemp()
    return str((base if worker_id == "master" else base.parent) / "gym_cache")


@pytest.fixture(scope="session")
def ref(ref_cache):
    with FileLock(ref_cache + ".lock"):
        return reference_policy(ReferenceConfig(), cache_dir=ref_cache)
