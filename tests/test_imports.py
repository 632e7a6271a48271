"""DESIGN.md's import table, enforced by walking every module's imports."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "testbed": {"envs", "llm_backend", "analysis"},
    "envs": {"torch", "testbed", "llm_backend", "analysis"},
    "llm_backend": {"envs", "analysis"},
    "analysis": {"llm_backend", "envs", "torch"},
}
# analysis may import the torch-free module that names logged fields, nothing else of testbed's.
ANALYSIS_ALLOWED_TESTBED = {"testbed.metrics"}


def imports_of(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_respect_design(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name, line in imports_of(path):
            top = name.split(".")[0]
            if top in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
            if package == "analysis" and top == "testbed" and name not in ANALYSIS_ALLOWED_TESTBED:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name} (only {ANALYSIS_ALLOWED_TESTBED})")
    assert not bad, "\n".join(bad)


def test_metrics_module_is_torch_free():
    names = {n.split(".")[0] for n, _ in imports_of(ROOT / "testbed" / "metrics.py")}
    assert "torch" not in names and "numpy" not in names


# Modules that must load without torch or transformers (whatever they import, transitively), each with
# a statement that uses it.
LIGHT_MODULES = {
    "llm_backend.verifier": "from llm_backend.verifier import verify_chain; "
                            "assert verify_chain('2 + 3 = 5. \\\\boxed{5}', 5, [2, 3]).reason == 'ok'",
    "llm_backend.chain_problems": "import random; from llm_backend.chain_problems import chain_problem; "
                                  "chain_problem(random.Random(0))",
    # reading a config: the schema, a preset and an override, without the registries' torch
    "testbed.config_schema": "from testbed import config_schema as S; "
                             "cfg = S.load('configs/ppo.yaml', ['stop.tau=3']); assert cfg.stop.tau == 3",
}
HEAVY = ("torch", "transformers")


def modules_loaded_by(code: str) -> set[str]:
    """Top-level names of the modules loaded by running ``code`` in a fresh interpreter."""
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return {name.split(".")[0] for name in json.loads(out.stdout.strip().splitlines()[-1])}


@pytest.mark.parametrize("module", sorted(LIGHT_MODULES))
def test_light_modules_load_without_torch(module):
    loaded = modules_loaded_by(LIGHT_MODULES[module])
    assert module.split(".")[0] in loaded  # the probe did import it
    assert not loaded & set(HEAVY), f"{module} loads {sorted(loaded & set(HEAVY))}"
