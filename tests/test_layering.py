"""The layering DESIGN.md asks for, checked on the source: no import circles among hoopd's
modules (imports inside functions count; ``if TYPE_CHECKING:`` blocks do not), pgwire
imports nothing else of hoopd, and loading the config loads no policy code."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports() -> dict[str, set[str]]:
    mods: dict[str, set[str]] = {}
    for p in (ROOT / "hoopd").rglob("*.py"):
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(p.read_text())
        typing_only = {id(n) for node in ast.walk(tree)
                       if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                       for b in node.body for n in ast.walk(b)}
        deps: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hoopd"):
                deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("hoopd")}
        mods[name] = deps - {name}
    return mods


def _cycles(mods: dict[str, set[str]]) -> set[tuple[str, ...]]:
    found: set[tuple[str, ...]] = set()
    done: set[str] = set()

    def visit(m: str, stack: list[str]) -> None:
        for d in mods.get(m, ()):
            if d in stack:
                c = stack[stack.index(d):]
                i = c.index(min(c))
                found.add(tuple(c[i:] + c[:i]))
            elif d not in done:
                visit(d, stack + [d])
        done.add(m)

    for m in sorted(mods):
        visit(m, [m])
    return found


def test_no_import_circles():
    mods = _imports()
    assert len(mods) > 50
    assert _cycles(mods) == set()


def test_the_cycle_finder_finds_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == {("a", "b", "c")}


def test_pgwire_is_sans_io_and_stands_alone():
    for name, deps in _imports().items():
        if name.startswith("hoopd.pgwire"):
            assert all(d.startswith("hoopd.pgwire") for d in deps), (name, deps)


def test_loading_the_config_loads_no_policy_code():
    out = subprocess.run([sys.executable, "-c", "import sys, hoopd.config; "
                          "print(' '.join(m for m in sys.modules if m.startswith('hoopd.policy') or m == 'pglast'))"],
                         capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == ""
