"""DESIGN.md's import table, enforced by walking every module's imports, string imports included.

Layers: the algorithm core (``testbed`` outside ``testbed.ops``), the three packages beside it, and the
application layer ``testbed.ops`` above all four. :data:`MAY_IMPORT` states every edge between them; an
import statement, an ``importlib.import_module`` call or an entry-point string (``"pkg.module:name"``)
that crosses any other edge fails the test, so a new upward edge cannot hide in a string.
"""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("testbed.ops", "testbed", "envs", "llm_backend", "analysis")
"""Our layers; a module belongs to the first whose name prefixes its own (``testbed.ops`` before ``testbed``)."""
MAY_IMPORT = {
    "testbed.ops": {"testbed.ops", "testbed", "envs", "llm_backend", "analysis"},  # composes everything
    "testbed": {"testbed"},  # the core: torch, numpy, gymnasium's API; no package beside or above it
    "envs": {"envs"},  # gymnasium and numpy only
    "llm_backend": {"llm_backend", "testbed"},  # the core's types and registries
    "analysis": {"analysis", "testbed"},  # reads run directories; of testbed only the metric names (below)
}
THIRD_PARTY_FORBIDDEN = {"envs": {"torch"}, "analysis": {"torch", "transformers"}}
ANALYSIS_ALLOWED_TESTBED = {"testbed.metrics", "testbed.scoring"}
"""analysis may import the torch-free modules that name logged fields and define the detector metrics,
nothing else of testbed's."""
MODULE_STRING = re.compile(r"^(testbed|envs|llm_backend|analysis)(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*)?$")


def layer_of(module: str) -> str | None:
    for layer in LAYERS:
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path):
    """``(module, line, how)`` for every import statement, ``import_module`` call with a constant
    argument, and string constant that names one of our modules (an entry point)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno, "import"
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno, "import"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_STRING.match(node.value):
            yield node.value.split(":")[0], node.lineno, "string"


def test_the_layers_cover_every_package_module():
    for package in ("testbed", "envs", "llm_backend", "analysis"):
        for path in (ROOT / package).rglob("*.py"):
            assert layer_of(module_name(path)) is not None, path


@pytest.mark.parametrize("layer", LAYERS)
def test_layer_imports_respect_design(layer):
    bad = []
    top = ROOT / Path(*layer.split("."))
    for path in sorted(top.rglob("*.py")):
        if layer_of(module_name(path)) != layer:
            continue  # testbed/ops/* belongs to testbed.ops, not to the core
        for name, line, how in imports_of(path):
            target = layer_of(name)
            where = f"{path.relative_to(ROOT)}:{line} {'imports' if how == 'import' else 'names (a string import)'} {name}"
            if target is None:
                if name.split(".")[0] in THIRD_PARTY_FORBIDDEN.get(layer, ()):
                    bad.append(where)
                continue
            if target not in MAY_IMPORT[layer]:
                bad.append(f"{where}: {layer} may not reach {target}")
            elif layer == "analysis" and target == "testbed" and name not in ANALYSIS_ALLOWED_TESTBED:
                bad.append(f"{where} (of testbed, analysis may import only {sorted(ANALYSIS_ALLOWED_TESTBED)})")
    assert not bad, "\n".join(bad)


def test_a_string_import_across_an_edge_is_caught(tmp_path):
    """The walker sees entry-point strings and import_module calls, not only import statements."""
    p = tmp_path / "m.py"
    p.write_text('import importlib\nRUNNER = "testbed.ops.sweep:run_sweep"\nimportlib.import_module("envs")\n')
    found = {(n, how) for n, _, how in imports_of(p)}
    assert ("testbed.ops.sweep", "string") in found and ("envs", "string") in found
    assert layer_of("testbed.ops.sweep") == "testbed.ops" and "testbed.ops" not in MAY_IMPORT["analysis"]


def test_metrics_module_is_torch_free():
    names = {n.split(".")[0] for n, _, _ in imports_of(ROOT / "testbed" / "metrics.py")}
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
