"""Test-suite settings: hypothesis profiles, the gpu marker, and where shared data sets are found.

``TESTBED_HYPOTHESIS=dev`` runs more, random examples locally; the default (and CI) profile is
derandomised with no example database, so CI is reproducible.
"""

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, database=None, max_examples=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("TESTBED_HYPOTHESIS", "ci"))

torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
"""Data sets kept beside the repository, not in it: ``../shared/data/`` from the repository root."""


@pytest.fixture
def shared_data():
    """``shared_data(*parts)``: the path of a file under :data:`SHARED_DATA`; skips the test when it is absent."""

    def get(*parts: str) -> Path:
        path = SHARED_DATA.joinpath(*parts)
        if not path.exists():
            pytest.skip(f"{Path('../shared/data').joinpath(*parts)} not present (shared data beside the repository)")
        return path

    return get
