"""The package layout's rules, checked on the source: dependencies point down, no private names cross packages.

Layers, bottom up: ``errors``, then ``numbers`` and ``mixing``; ``attacks``, ``data``, ``runtime`` and ``defenses``;
``models``; ``evaluate`` and ``train``; ``report``; ``paper``; ``cli``. A module may import its own package and
the packages of lower layers, never one of its own layer or above (so there are no cycles between packages).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "advlab"
LAYER = {
    "errors": 0,
    "numbers": 0.5,  # reads numbers, raises errors' UsageError
    "mixing": 0.5,  # the counter-based random numbers' integer mixer (torch only)
    "attacks": 1,
    "data": 1,
    "runtime": 1,
    "defenses": 1,  # input transformations and BPDA: torch, Pillow, numpy only
    "models": 2,
    "evaluate": 3,
    "train": 3,
    "report": 4,
    "paper": 5,
    "cli": 6,
    "__main__": 7,
}
ALLOWED_PRIVATE: set[tuple[str, str]] = set()  # no exceptions: every cross-package import is of a public name


def package_of(path: Path, root: Path = SRC) -> str:
    rel = path.relative_to(root)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.name != "__init__.py" else ""


def imports(path: Path, root: Path = SRC) -> list[tuple[str, list[str], int]]:
    """(absolute module, imported names, line) of every import in ``path``, function-level ones included."""
    here = list(path.relative_to(root.parent).with_suffix("").parts)[:-1]  # the package the module is in
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            out.append((module, [a.name for a in node.names], node.lineno))
    return out


MODULES = sorted(p for p in SRC.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_package_has_a_layer():
    assert {package_of(p) for p in MODULES} - {""} <= set(LAYER)


def check_imports_point_down(path: Path, root: Path = SRC) -> None:
    own = package_of(path, root)
    if not own:
        return
    for module, names, line in imports(path, root):
        parts = module.split(".")
        if parts[0] != "advlab":
            continue
        targets = [parts[1]] if len(parts) > 1 else [n for n in names if n in LAYER]  # from advlab import x
        for target in targets:
            if target == own or target not in LAYER:
                continue
            assert LAYER[target] < LAYER[own], (
                f"{path.relative_to(root)}:{line} imports advlab.{target} (layer {LAYER[target]}) from {own} "
                f"(layer {LAYER[own]}): dependencies must point down"
            )


def check_no_private_name_crosses_a_package(path: Path, root: Path = SRC) -> None:
    own = package_of(path, root)
    rel = str(path.relative_to(root))
    for module, names, line in imports(path, root):
        parts = module.split(".")
        if parts[0] != "advlab" or len(parts) < 2 or parts[1] == own:
            continue
        if (rel, module) in ALLOWED_PRIVATE:
            continue
        private = [p for p in parts[2:] if p.startswith("_")] + [n for n in names if n.startswith("_")]
        assert not private, f"{rel}:{line} imports private {', '.join(private)} from {module}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down(path: Path):
    check_imports_point_down(path)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_private_name_crosses_a_package(path: Path):
    check_no_private_name_crosses_a_package(path)


def test_the_layout_checks_see_a_violation(tmp_path):
    """The checks can fail: an upward import and a private one in a module of evaluate/ are found, relative
    imports resolved."""
    fake = tmp_path / "advlab" / "evaluate" / "x.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from ..report import summary_report\n\n\ndef f():\n    from ..attacks._core import margin\n")
    root = tmp_path / "advlab"
    assert [m for m, _, _ in imports(fake, root)] == ["advlab.report", "advlab.attacks._core"]
    with pytest.raises(AssertionError, match=r"evaluate/x.py:1 imports advlab.report .*must point down"):
        check_imports_point_down(fake, root)
    with pytest.raises(AssertionError, match=r"imports private _core from advlab\.attacks\._core"):
        check_no_private_name_crosses_a_package(fake, root)
