"""The house's two rules that code review alone does not keep: imports point one way
(`pipeline` -> `fusion` -> `streams` -> `flow` -> `p3dbase`), and every user-facing error has one root."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from flow.errors import FlowError
from fusion.errors import FusionError
from p3dbase.atomic import DiskFullError
from p3dbase.errors import P3DError, SettingError
from pipeline.errors import ConfigError, DatasetError, PipelineError
from streams.errors import StreamsError

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ["p3dbase", "flow", "streams", "fusion", "pipeline"]  # each may import only those before it


def _project_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
        found.update(name.split(".")[0] for name in names if name.split(".")[0] in LAYERS)
    return found


@pytest.mark.parametrize("package", LAYERS)
def test_imports_point_one_way(package):
    allowed = set(LAYERS[: LAYERS.index(package) + 1])
    wrong = {str(p.relative_to(ROOT)): sorted(_project_imports(p) - allowed)
             for p in sorted((ROOT / package).rglob("*.py")) if _project_imports(p) - allowed}
    assert not wrong, f"{package} may import only {sorted(allowed)}: {wrong}"


def test_a_module_that_imports_upward_is_caught(tmp_path):
    # The checker itself must see both import forms, or the test above could never fail.
    bad = tmp_path / "bad.py"
    bad.write_text("import fusion.metrics\nfrom pipeline.config import Config\nfrom . import sibling\n")
    assert _project_imports(bad) == {"fusion", "pipeline"}


@pytest.mark.parametrize("error", [FlowError, StreamsError, FusionError, PipelineError, ConfigError, DatasetError,
                                   SettingError, DiskFullError])
def test_every_user_facing_error_has_one_root(error):
    assert issubclass(error, P3DError)


# Numerical kernels compiled by numba or torch.compile take their arrays positionally, as kernels do.
KERNELS = {"flow/tvl1_fast_kernels.py", "flow/tvl1_torch.py", "flow/jpeg_entropy.py"}


def _long_signatures(path: Path, limit: int = 6) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            positional = [a for a in node.args.posonlyargs + node.args.args if a.arg not in ("self", "cls")]
            if len(positional) > limit:
                found.append(f"{node.name} ({len(positional)})")
    return found


@pytest.mark.parametrize("package", LAYERS)
def test_no_function_takes_more_than_six_positional_parameters(package):
    """More goes in keyword-only arguments or a small dataclass, so that a call says what it passes."""
    long = {str(p.relative_to(ROOT)): found for p in sorted((ROOT / package).rglob("*.py"))
            if str(p.relative_to(ROOT)) not in KERNELS and (found := _long_signatures(p))}
    assert not long


def test_a_long_signature_is_caught(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f(a, b, c, d, e, f, g):\n    pass\n\ndef g(a, b, c, d, e, f, *, g):\n    pass\n")
    assert _long_signatures(module) == ["f (7)"]
