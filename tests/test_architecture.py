"""The import contract: rooms import only downward, no cycles, the CLI only through the facade.

Every ``import`` of the package is read with ``ast`` (top-level and inside functions alike), so an inversion hidden
in a function body fails here as well as one at the top of a file.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "yolo_distill"

#: layer of each room, lowest first; a module may import its own room and any lower layer
LAYERS = {
    "log": 0, "registry": 0, "offline": 0, "config": 1, "checkpoints": 1, "data": 1, "evaluation": 2,
    "distill": 3, "compress": 3, "deploy": 3,
    "bench": 4, "demo": 4,
    "api": 5,
    "cli": 6,
}  # fmt: skip


def _modules() -> dict[str, Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        parts = list(f.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """``(imported module, [imported names])`` for every import of the package in ``path``."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("yolo_distill")]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([mod] if mod else []))
            if not mod.startswith("yolo_distill"):
                continue
            names = [a.name for a in node.names]
            subs = [n for n in names if f"{mod}.{n}" in modules]  # "from pkg import module"
            found += [(f"{mod}.{n}", []) for n in subs]
            rest = [n for n in names if n not in subs]
            if rest or not subs:
                found.append((mod, rest))
    return found


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # None: the package itself


def _graph() -> dict[str, list[tuple[str, list[str]]]]:
    modules = _modules()
    return {m: [(t, n) for t, n in _imports(m, p, modules) if t in modules] for m, p in modules.items()}


def test_every_room_has_a_layer():
    rooms = {_room(m) for m in _modules()} - {None}
    assert rooms <= set(LAYERS), f"rooms without a layer in this contract: {sorted(rooms - set(LAYERS))}"


def test_imports_point_down_and_never_at_a_siblings_private_name():
    bad = []
    for src, targets in _graph().items():
        rs = _room(src)
        if rs is None:  # yolo_distill/__init__.py: the lazy public surface, loads api on first use
            continue
        for tgt, names in targets:
            rt = _room(tgt)
            if rt is None:  # "from yolo_distill import __version__"
                continue
            if LAYERS[rt] > LAYERS[rs]:
                bad.append(f"{src} imports {tgt} (layer {LAYERS[rt]} above {LAYERS[rs]})")
            elif rt != rs and any(n.startswith("_") and not n.startswith("__") for n in names):
                bad.append(f"{src} imports private {names} from {tgt}")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    graph = {m: sorted({t for t, _ in ts if t != m}) for m, ts in _graph().items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in graph.get(m, []):
            if _room(t) is None or t == m.rsplit(".", 1)[0]:
                continue  # a package's own __init__ (lazy re-exports) is not a dependency of its modules
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t) :] + [t]) if t in stack else f"{m} -> {t}")
            elif t not in state:
                visit(t, [*stack, t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def test_cli_imports_only_the_facade():
    targets = {t for t, _ in _graph()["yolo_distill.cli"]}
    assert targets <= {"yolo_distill", "yolo_distill.api", "yolo_distill.log"}, targets


@pytest.mark.parametrize("tool", sorted(p.name for p in (PKG.parent / "tools").glob("*.py")))
def test_tools_go_through_the_facade_or_the_cli(tool):
    tree = ast.parse((PKG.parent / "tools" / tool).read_text())
    used = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    used |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    ours = {m for m in used if m.startswith("yolo_distill")}
    assert ours and ours <= {"yolo_distill.api", "yolo_distill.cli", "yolo_distill.log"}, ours


def test_the_contract_catches_an_upward_import(tmp_path, monkeypatch):
    """The contract itself can fail: a foundation module importing the facade is reported."""
    fake = dict(_modules())
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from yolo_distill.api import train\n")
    found = _imports("yolo_distill.config", probe, fake)
    assert ("yolo_distill.api", ["train"]) in found
    assert LAYERS[_room("yolo_distill.api")] > LAYERS[_room("yolo_distill.config")]


def test_every_public_name_is_the_facades_callable_even_after_every_module_is_imported():
    """``yolo_distill.<name>`` is api's function, never a submodule that shadows it once imported."""
    import importlib

    import yolo_distill
    from yolo_distill import api

    for m in _modules():
        if not m.endswith("__main__"):
            importlib.import_module(m)
    for name in yolo_distill.__all__:
        if name in ("__version__", "DistillationTrainer"):
            continue
        assert getattr(yolo_distill, name) is getattr(api, name), name
        assert callable(getattr(yolo_distill, name)), name


def test_readme_lists_every_call_of_the_facade():
    """README's "Every stage is one call of yolo_distill.api" sentence names each public function of ``api``."""
    import inspect

    from yolo_distill import api

    readme = (PKG.parent / "README.md").read_text()
    sentence = readme[readme.index("Every stage is one call of `yolo_distill.api`") :].split(";")[0]
    named = set(re.findall(r"`(\w+)`", sentence))
    functions = {n for n in api.__all__ if inspect.isfunction(getattr(api, n))}
    assert functions - named == set(), f"README does not name {sorted(functions - named)}"
