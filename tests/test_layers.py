"""The layering is written down and checked: modules import only their own or lower layers."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "cinevox"
# lower number = lower layer; a module may import its own layer or below
LAYERS = {
    "utils": 0, "profiles": 0, "outputs": 0, "metrics": 1, "stats": 1, "models": 2, "losses": 2, "data": 2,
    "training": 3, "evaluation": 3, "analysis": 3, "simulate": 3, "inference": 3,
    "report": 4, "demo": 5, "api": 5, "cli": 6, "__main__": 6, "__init__": 6,
}


def _layer(module: str) -> int:
    return LAYERS[module.split(".")[0]]


def test_imports_only_go_downward():
    bad = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).with_suffix("")
        here = _layer(rel.parts[0] if len(rel.parts) > 1 else rel.name)
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cinevox."):
                names = [node.module[len("cinevox."):]]
            elif isinstance(node, ast.Import):
                names = [a.name[len("cinevox."):] for a in node.names if a.name.startswith("cinevox.")]
            for name in names:
                if _layer(name) > here:
                    bad.append(f"{rel} imports cinevox.{name}")
    assert not bad, bad
