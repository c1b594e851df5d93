"""Does every table of a cinevox report fit the page? Checked in headless Chromium at a given window width: each
table's right edge must stay within the page's text column (the body), not only within the window.

    python benchmarks/report_layout.py REPORT_DIR [--width 1400] [--screenshot first_screen.png]

Opens every collapsed ``<details>`` (the appendices too), measures each table's right edge against the page's
width, and prints one row per table that overflows (exit code 1 if any does). ``--screenshot`` also writes the
report's first screen as it opens (details closed) at that width. Needs ``chromium`` (``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROBE = """<script>
window.addEventListener('load', () => {
  document.querySelectorAll('details').forEach(d => d.open = true);
  const width = Math.min(document.documentElement.clientWidth, Math.round(document.body.getBoundingClientRect().right));
  const rows = [];
  document.querySelectorAll('table').forEach((t, i) => {
    const r = t.getBoundingClientRect();
    const head = Array.from(t.querySelectorAll('th')).slice(0, 3).map(h => h.textContent).join(' | ');
    rows.push({index: i, right: Math.round(r.right), width: Math.round(r.width), head: head});
  });
  const pre = document.createElement('pre');
  pre.id = 'layout-probe';
  pre.textContent = JSON.stringify({page: width, scroll: document.documentElement.scrollWidth, tables: rows});
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    sys.exit("chromium not found: apt-get install -y chromium")


def measure(index: Path, width: int) -> dict:
    page = index.read_text()
    with tempfile.NamedTemporaryFile("w", suffix=".html", dir=index.parent, delete=False) as f:
        f.write(page.replace("</body>", PROBE + "</body>"))
        probe = Path(f.name)
    try:
        out = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={width},900",
                              "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                             capture_output=True, text=True, timeout=120, check=True).stdout
    finally:
        probe.unlink()
    m = re.search(r'<pre id="layout-probe">(.*?)</pre>', out, re.S)
    if not m:
        sys.exit("the probe did not run")
    return json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<")
                      .replace("&gt;", ">"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path, help="a report folder (index.html) or the HTML file")
    ap.add_argument("--width", type=int, default=1400, help="window width in px (default 1400)")
    ap.add_argument("--screenshot", type=Path, help="write the first screen here (PNG)")
    a = ap.parse_args()
    index = a.report / "index.html" if a.report.is_dir() else a.report
    res = measure(index, a.width)
    over = [t for t in res["tables"] if t["right"] > res["page"]]
    print(f"{index}: {len(res['tables'])} tables at {a.width} px (text column ends at {res['page']} px, scroll width "
          f"{res['scroll']} px), every details element open")
    print(f"widest table: {max((t['width'] for t in res['tables']), default=0)} px")
    for t in over:
        print(f"  overflows: table {t['index']} ({t['head']}): right edge {t['right']} px")
    print("every table fits" if not over else f"{len(over)} tables overflow")
    if a.screenshot:
        subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={a.width},900",
                        "--hide-scrollbars", f"--screenshot={a.screenshot.resolve()}", index.resolve().as_uri()],
                       capture_output=True, timeout=120, check=True)
        print(f"first screen: {a.screenshot}")
    return 1 if over else 0


if __name__ == "__main__":
    raise SystemExit(main())
