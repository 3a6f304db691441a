"""The package's layering: pyproject.toml's import-linter contract holds, and no two modules import each other.

Both read every import statement, at module level or inside functions.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def graph():
    grimp = pytest.importorskip("grimp", reason="installed with import-linter (pip install -e '.[test]')")
    return grimp.build_graph("tvm_shuffle")


def test_the_layers_contract_holds():
    lint = shutil.which("lint-imports")
    assert lint, "lint-imports is missing: pip install -e '.[test]'"
    done = subprocess.run([lint, "--no-cache"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def test_no_import_cycles(graph):
    cycles = []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported != module and not imported.startswith(module + ".") and not module.startswith(imported + "."):
                back = graph.find_shortest_chain(importer=imported, imported=module)
                if back:
                    cycles.append(" -> ".join([module, *back]))
    assert not cycles, "import cycles:\n" + "\n".join(cycles[:10])


def test_the_runtime_layer_imports_no_compiler_and_no_torch(graph):
    for module in ("tvm_shuffle.runtime", "tvm_shuffle.bundle_format", "tvm_shuffle.host"):
        imported = graph.find_upstream_modules(module)
        assert not {m for m in imported if m.startswith(("tvm_shuffle.build", "tvm_shuffle.tvm_compat"))}, module
    code = "import sys, tvm_shuffle.runtime; sys.exit(bool({'torch', 'tvm'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
