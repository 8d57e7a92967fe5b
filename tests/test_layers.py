"""The layers of docs/architecture.md, read from every module's imports: charter/ imports
neither controller/ nor mediad/ nor cli/; controller/ and mediad/ never import each other;
nothing imports cli/."""
from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("charter", "controller", "mediad", "cli")
# What each package may import of the others.
ALLOWED = {
    "charter": set(),
    "controller": {"charter"},
    "mediad": {"charter"},
    "cli": {"charter", "controller", "mediad"},
}


def imported_packages(path: Path) -> set[str]:
    """The packages of this project a Python or Cython module imports (top-level name)."""
    text = path.read_text()
    if path.suffix in (".pyx", ".pxd"):
        names = set()
        for line in text.splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] in ("from", "import", "cimport"):
                names.add(words[1].split(".")[0])
        return names & set(PACKAGES)
    names = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & set(PACKAGES)


def modules(package: str) -> list[Path]:
    files = [p for p in (ROOT / package).rglob("*") if p.suffix in (".py", ".pyx", ".pxd", ".pyi")]
    return sorted(p for p in files if not p.name.endswith(("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")))


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_imports_only_the_layers_below_it(package: str) -> None:
    found = modules(package)
    assert found, f"no modules found in {package}/"
    wrong = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) - ALLOWED[package] - {package})
        for path in found
    }
    assert {k: v for k, v in wrong.items() if v} == {}


def test_the_reader_finds_imports_of_every_form(tmp_path: Path) -> None:
    module = tmp_path / "sample.py"
    module.write_text(
        "import os\nimport mediad._forward\nfrom controller import daemons\n"
        "def late():\n    from cli.main import main\nfrom . import sibling\n"
    )
    assert imported_packages(module) == {"mediad", "controller", "cli"}
    cython = tmp_path / "sample.pyx"
    cython.write_text("from charter import suites\nfrom mediad._net cimport iovec\ncimport controller.x\n")
    assert imported_packages(cython) == {"charter", "mediad", "controller"}


# What logging's LogRecord has already: a log call's `extra` naming one of these raises
# KeyError at the call, and then only at the levels it is logged at (seen: the gateway's
# "joined", at info, failed every page's join under `charter up`'s default level).
RECORD_FIELDS = set(vars(logging.LogRecord("n", 0, "p", 0, "m", (), None))) | {"message", "asctime"}


@pytest.mark.parametrize("package", [*PACKAGES, "bench"])
def test_no_log_call_overwrites_a_field_of_the_log_record(package: str) -> None:
    clashes = []
    for path in (p for p in modules(package) if p.suffix == ".py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            for keyword in node.keywords:
                if keyword.arg == "extra" and isinstance(keyword.value, ast.Dict):
                    clashes += [f"{path.relative_to(ROOT)}:{node.lineno}: {key.value!r}" for key in keyword.value.keys
                                if isinstance(key, ast.Constant) and key.value in RECORD_FIELDS]
    assert not clashes, f"log calls whose extra overwrites a LogRecord field: {clashes}"
