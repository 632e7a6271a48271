"""Every doctest in the packages runs: the modules holding one are found by their ``>>>`` lines, so a new
doctest is picked up without a list to keep."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("testbed", "envs", "llm_backend", "analysis")
MODULES = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts) for pkg in PACKAGES
                 for p in (ROOT / pkg).rglob("*.py") if ">>> " in p.read_text())


def test_doctest_modules_were_found():
    assert "testbed.scoring" in MODULES and len(MODULES) >= 5


@pytest.mark.parametrize("name", MODULES)
def test_doctests_pass(name):
    if name.startswith("llm_backend"):
        pytest.importorskip("transformers")
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name}: its '>>>' lines are not in a docstring doctest finds"
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} doctest examples failed"
