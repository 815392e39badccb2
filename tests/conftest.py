"""Fixtures shared by the test modules."""

import pytest

from selmask_lib.data.synthetic import SMALL, ensure_synthetic_voc


@pytest.fixture(scope="session")
def small_synthetic_root(tmp_path_factory):
    """The embedded synthetic dataset at its small test size (a VOC tree), generated once per test run."""
    return ensure_synthetic_voc(tmp_path_factory.mktemp("synthetic"), **SMALL)
