"""Are the demo's numbers quoted in the README and docs/*.md the ones a demo run gives?

    python benchmarks/readme_demo_numbers.py [--demo cinevox-demo] [--update]

Runs ``cinevox demo --out DEMO`` first when DEMO holds no finished demo (a few CPU minutes), then finds each quoted
number in the text (the lesion ROC AUCs against the planted regions, the concepts' informativeness AUCs, the demo's
run time) and prints it beside the demo's own value. Exit code 1 if a number differs by more than its rounding;
``--update`` writes the demo's values into the text instead (then rerun without it: every number matches).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (file, pattern with one group per number, [key path into the demo's outputs for each group])
CLAIMS = [
    ("README.md", r"on the demo's encdec model, ranked against the simulator's planted regions, the SSIM drops give "
                  r"ROC AUC (\d\.\d\d) \(inverted\), identification (\d\.\d\d), correlation (\d\.\d\d)",
     ["lesion:ssim", "lesion:ident", "lesion:corr"]),
    ("docs/statistics.md", r"lesion rankings against the planted regions, ROC AUC (\d\.\d\d) \(identification\), "
                           r"(\d\.\d\d) \(frame\s+correlation\), (\d\.\d\d) \(SSIM\)",
     ["lesion:ident", "lesion:corr", "lesion:ssim"]),
    ("docs/statistics.md", r"\(demo (?:E-D|encdec): motion (\d\.\d\d), edges (\d\.\d\d)\)",
     ["concepts:motion", "concepts:edges"]),
]


def demo_values(demo: Path) -> dict[str, float]:
    run = demo / "runs" / "encdec"
    if not run.is_dir():
        run = demo / "runs" / "E-D"  # a demo of an older cinevox
    les = json.loads((run / "lesion" / "summary.json").read_text())
    con = json.loads((run / "concepts" / "summary.json").read_text())
    layer = con["default_layer"]
    out = {f"lesion:{k}": float(v) for k, v in les.get("auc_planted", {}).items()}
    out.update({f"concepts:{c}": float(v[layer]["auc"]) for c, v in con.get("validation", {}).items()})
    return out


def update(values: dict[str, float]) -> None:
    """Rewrite every quoted number with the demo's value (rounded to 2 decimals), in place."""
    for fname, pattern, keys in CLAIMS:
        path = ROOT / fname
        text = path.read_text()
        m = re.search(pattern.replace(r"\s+", " ").replace(" ", r"\s+"), text)
        if not m:
            continue
        for i in reversed(range(len(keys))):
            if keys[i] in values:
                text = text[:m.start(i + 1)] + f"{values[keys[i]]:.2f}" + text[m.end(i + 1):]
        path.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", type=Path, default=Path("cinevox-demo"), help="a demo folder (run when unfinished)")
    ap.add_argument("--update", action="store_true", help="write the demo's values into the quoted text")
    a = ap.parse_args()
    if not (a.demo / "demo_summary.json").is_file():
        subprocess.run([sys.executable, "-m", "cinevox", "demo", "--out", str(a.demo)], check=True)
    values = demo_values(a.demo)
    if a.update:
        update(values)
    bad = 0
    print(f"{'where':<22} {'what':<18} {'text':>6} {'demo':>6}")
    for fname, pattern, keys in CLAIMS:
        text = " ".join((ROOT / fname).read_text().split())
        m = re.search(pattern, text)
        if not m:
            print(f"{fname:<22} claim not found: {pattern[:60]}...")
            bad += 1
            continue
        for key, quoted in zip(keys, m.groups()):
            got = values.get(key)
            ok = got is not None and abs(float(quoted) - got) <= 0.005 + 1e-9
            bad += not ok
            print(f"{fname:<22} {key:<18} {quoted:>6} {'/' if got is None else f'{got:.3f}':>6}"
                  f"{'' if ok else '  <- differs'}")
    print("every quoted demo number matches" if not bad else f"{bad} quoted numbers differ from this demo run")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
