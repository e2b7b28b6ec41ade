"""The layer order of ARCHITECTURE.md, checked on the source: every import in every vitkit module (module-level and
inside functions, absolute and relative) goes to its own part or to one in a lower layer."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "vitkit"

# Lowest first; a part may import its own layer and the ones before it. "vitkit" is the package's __init__
# (the public API). Keep in step with ARCHITECTURE.md.
LAYERS = [
    ["errors", "version"],
    ["config", "perf", "flags", "download"],
    ["hybrid"],
    ["model", "resnet", "mpp"],
    ["data"],
    ["runtime"],
    ["checkpoint"],
    ["analysis"],
    ["eval"],
    ["train"],
    ["study"],
    ["bench"],
    ["vitkit", "cli_models"],
    ["cli", "__main__"],
]
LAYER = {part: i for i, parts in enumerate(LAYERS) for part in parts}


def part_of(module: str) -> str:
    """vitkit.train.loop -> train; vitkit.model -> model; vitkit -> vitkit."""
    names = module.split(".")
    return names[1] if len(names) > 1 else names[0]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    names = list(rel.parts)
    if names[-1] == "__init__":
        names = names[:-1]
    return ".".join(names)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every vitkit import in the file, wherever it sits. `from . import x` counts as
    an import of the submodule x when the package is vitkit itself (`from vitkit import perf` -> vitkit.perf)."""
    mod = module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "vitkit"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "vitkit":
                continue
            if target == "vitkit":  # from vitkit import perf / __version__: a submodule if there is one
                for a in node.names:
                    sub = PKG / a.name
                    out.append((node.lineno, f"vitkit.{a.name}" if sub.is_dir() or sub.with_suffix(".py").exists()
                                else "vitkit"))
            else:
                out.append((node.lineno, target))
    return out


MODULES = sorted(PKG.rglob("*.py"))


def test_every_part_has_a_layer():
    parts = {part_of(module_name(p)) for p in MODULES}
    assert parts - set(LAYER) == set(), "new part(s): place them in LAYERS here and in ARCHITECTURE.md"


def test_the_parser_sees_function_level_and_relative_imports(tmp_path):
    """The checker itself: a relative import inside a function is found and resolved (else the test proves little)."""
    found = dict((m, n) for n, m in imports(PKG / "eval" / "cli.py"))
    assert "vitkit.checkpoint.io" in found  # `from ..checkpoint.io import load` inside run()
    assert "vitkit.runtime" in found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_down_the_layers(path):
    src = part_of(module_name(path))
    bad = [f"line {line}: {target} (layer {LAYER[part_of(target)]}: {part_of(target)})"
           for line, target in imports(path)
           if part_of(target) in LAYER and LAYER[part_of(target)] > LAYER[src]]
    unknown = [t for _, t in imports(path) if part_of(t) not in LAYER]
    assert not unknown, f"{path.name} imports parts without a layer: {unknown}"
    assert not bad, f"{path.relative_to(ROOT)} (layer {LAYER[src]}: {src}) imports upward: {bad}"


def test_architecture_md_states_this_order():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    order = [line for line in text.splitlines() if line.startswith("errors ")]
    assert order, "ARCHITECTURE.md lost its one-line layer order"
    want = " -> ".join(" ".join(parts) for parts in LAYERS).replace("vitkit ", "vitkit/__init__ ")
    assert order[0].strip("` ") == want
