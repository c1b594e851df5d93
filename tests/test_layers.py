"""The layering is written down and checked: modules import only their own or lower layers."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "cinevox"
# lower number = lower layer; a module may import its own layer or below
LAYERS = {
    "utils": 0, "profiles": 0, "metrics": 1, "stats": 1, "models": 2, "losses": 2, "data": 2, "configs": 2,
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


def test_help_of_every_command_is_light():
    """``cinevox --help`` and every ``cinevox CMD --help`` build the parser without torch, scipy or pandas."""
    import subprocess
    import sys

    code = (
        "import contextlib, io, sys\n"
        "from cinevox import cli\n"
        "names = list(cli.build_parser()._subparsers._group_actions[0].choices)\n"
        "for argv in [['--help']] + [[n, '--help'] for n in names]:\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
        "        cli.main(argv)\n"
        "    assert 'usage: cinevox' in out.getvalue(), argv\n"
        "heavy = sorted(m for m in ('torch', 'scipy', 'scipy.stats', 'pandas', 'nibabel', 'nilearn', 'av') "
        "if m in sys.modules)\n"
        "print(len(names), heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(SRC.parent)})
    n, heavy = out.stdout.strip().split(" ", 1)
    assert int(n) >= 16
    assert heavy == "[]", f"--help imported {heavy}"
