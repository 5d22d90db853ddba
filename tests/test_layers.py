"""Dependencies point one way (docs/ARCHITECTURE.md, "The map"): checked on the imports
each module of dsctl/ actually makes, read with ast (no module is imported)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "dsctl"
FRAMEWORK = {"pipeline", "cli", "configs", "files"}
BRIDGE = {"train/artifacts.py", "train/launch.py", "train/worker.py"}
"""The training modules that touch the framework: artifacts read store artifacts, and the
multi-process bridge rebuilds a StageContext on each rank."""

# layer -> dsctl layers (first path part below dsctl/) it may import
ALLOWED = {
    "errors": set(), "progress": set(), "files": set(),
    "model": set(),
    "fp8": {"model", "parallel"},  # parallel/weight_grad.py: the deferrable weight GEMM
    "tasks": {"errors"},
    "tokenizer": {"errors"},
    "parallel": {"model"},
    "sampling": {"model"},
    "serve": {"model"},
    "data": {"errors", "tasks", "files"},
    "train": {"errors", "model", "fp8", "parallel", "tasks", "data", "tokenizer", "configs", "files"},
    "rl": {"errors", "model", "tasks", "train", "sampling", "configs"},
    "eval": {"errors", "model", "tasks", "train", "sampling"},
}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        yield rel.as_posix(), rel.parts[0].removesuffix(".py"), _imports(path)


@pytest.mark.parametrize("rel,layer,imports", list(_modules()), ids=lambda v: v if isinstance(v, str) else "")
def test_module_imports_only_layers_below_it(rel, layer, imports):
    assert not {m for m in imports if m == "stages" or m.startswith("stages.")}, f"dsctl/{rel} names a stage"
    if layer in FRAMEWORK or layer not in ALLOWED:
        return
    allowed = ALLOWED[layer] | {layer} | (FRAMEWORK | {"progress"} if rel in BRIDGE else set())
    used = {m.split(".")[1] for m in imports if m.startswith("dsctl.")}
    assert used <= allowed, f"dsctl/{rel} ({layer}) imports {sorted(used - allowed)}"


def test_the_framework_imports_no_training_or_model_code():
    for rel, layer, imports in _modules():
        if layer in {"pipeline", "configs", "files"}:
            used = {m.split(".")[1] for m in imports if m.startswith("dsctl.")}
            assert used <= {"errors", "progress", "files", "pipeline", "configs"}, (rel, used)
