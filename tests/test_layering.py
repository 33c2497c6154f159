"""The parts' boundaries: the engine reaches the recorder only through the store contract
(``recorder.store``) and the CLI plumbing both CLIs share (``recorder.cliutil``); the recorder
never imports the engine; nobody imports another package's private names."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE_MAY_IMPORT = ("recorder.store", "recorder.cliutil")


def imports(package: str) -> list[tuple[Path, str, str | None]]:
    """(file, module, name or None) of every import in ``package``'s modules."""
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                out += [(path, a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                out += [(path, node.module, a.name) for a in node.names]
    return out


def owner(module: str) -> str:
    return module.split(".")[0]


def test_the_engine_reads_the_store_only_through_its_contract():
    found = imports("engine")
    reached = {
        (p.name, m if n is None or f"{m}.{n}" not in _submodules() else f"{m}.{n}")
        for p, m, n in found
        if owner(m) == "recorder" or (m == "recorder" and n)
    }
    assert reached, "the engine reads the store: some recorder import is expected"
    wrong = sorted(
        (f, m)
        for f, m in reached
        if not any(m == ok or m.startswith(ok + ".") for ok in ENGINE_MAY_IMPORT)
    )
    assert wrong == []


def test_the_recorder_never_imports_the_engine():
    assert [(p.name, m) for p, m, _ in imports("recorder") if owner(m) == "engine"] == []


def test_no_module_imports_another_packages_private_names():
    private = [
        (p.relative_to(ROOT).as_posix(), m, n)
        for package in ("engine", "recorder")
        for p, m, n in imports(package)
        if owner(m) in ("engine", "recorder")
        and owner(m) != package
        and ((n or "").startswith("_") or any(part.startswith("_") for part in m.split(".")[1:]))
    ]
    assert private == []


def _submodules() -> set[str]:
    return {
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in (ROOT / "recorder").rglob("*.py")
    }
