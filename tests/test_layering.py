"""The package layering of DESIGN.md: a module never imports one of a higher layer."""

import ast
from pathlib import Path

import kinetoscope

PACKAGE = Path(kinetoscope.__file__).parent

# Top-level module or subpackage -> layer. A new module must be placed here.
LAYERS = {
    "__init__": 0,
    "nn": 0,
    "patches": 0,
    "diffusion": 0,
    "io": 0,
    "checkpoint": 0,
    "vae": 1,
    "dit": 1,
    "text": 1,
    "data": 1,
    "captioner": 2,
    "presets": 2,
    "pipeline": 3,
    "model_folder": 3,
    "conditioning": 3,
    "train": 4,
    "evaluate": 4,
    "cli": 5,
    "__main__": 5,
    "web": 5,
}


def _top(module_path: Path) -> str:
    parts = module_path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imported_tops(tree: ast.AST, module_path: Path) -> set[str]:
    package_parts = module_path.relative_to(PACKAGE).parent.parts
    tops = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "kinetoscope" and len(parts) > 1:
                    tops.add(parts[1])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[0] != "kinetoscope":
                    continue
                rest = parts[1:]
            else:
                base = package_parts[: len(package_parts) - (node.level - 1)]
                rest = [*base, *(node.module.split(".") if node.module else [])]
            if rest:
                tops.add(rest[0])
            else:  # `from kinetoscope import x` names top-level modules directly
                tops.update(alias.name for alias in node.names)
    return tops


def test_every_module_has_a_layer():
    unknown = {_top(p) for p in PACKAGE.rglob("*.py")} - set(LAYERS)
    assert not unknown, f"place these modules in LAYERS: {sorted(unknown)}"


def test_lower_layers_never_import_higher_ones():
    violations = []
    for path in PACKAGE.rglob("*.py"):
        own = LAYERS[_top(path)]
        tree = ast.parse(path.read_text(), filename=str(path))
        for top in _imported_tops(tree, path):
            if top in LAYERS and LAYERS[top] > own:
                violations.append(
                    f"{path.relative_to(PACKAGE)} (layer {own}) imports {top} (layer {LAYERS[top]})"
                )
    assert not violations, "\n".join(violations)


def test_the_checker_catches_an_upward_import():
    tree = ast.parse("from kinetoscope.cli import main\nfrom ..pipeline import x\n")
    tops = _imported_tops(tree, PACKAGE / "data" / "world" / "render.py")
    # `..pipeline` from data/world resolves to data.pipeline, which is still inside data.
    assert "cli" in tops and "data" in tops
