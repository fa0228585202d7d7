"""The review workstation's figures (issue 12 §5), measured in the real browser by the Playwright test.

Runs tests/workstation/test_workstation_browser.py (a real ``medsight serve``, Orthanc and headless Chromium in a
loopback-only network namespace; root is needed for ``ip netns``) and writes benchmarks/results/workstation.json:
- time to first image of a 100-slice CT series (made from one shared CT slice with new UIDs, as serve.py makes
  its series): from the viewer opening the study (performance.now()) to Cornerstone3D's first IMAGE_RENDERED
  event, three fresh page loads; also with the page load, from ``goto`` to that event;
- the time from the click on Agree to the reader's SR found in Orthanc through its REST API.

    MEDSIGHT_THREADS=1 python benchmarks/workstation.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support.provenance import ROOT, provenance

OUT = ROOT / "benchmarks" / "results" / "workstation.json"


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        figures = Path(tmp) / "figures.json"
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "tests/workstation/test_workstation_browser.py"],
            cwd=ROOT, env={**os.environ, "MEDSIGHT_WORKSTATION_RESULTS": str(figures)},
        )
        if done.returncode != 0 or not figures.is_file():
            print("the browser test failed; no figures written", file=sys.stderr)
            return 1
        measured = json.loads(figures.read_text())
    record = {
        **provenance("workstation.py", depends_on=("src", "web/workstation/src", "tests/workstation")),
        "browser": "Chromium (system, headless) driven by Playwright",
        "series": "100 CT slices, 128x128 16-bit (pydicom's CT_small.dcm with new UIDs)",
        **measured,
    }
    OUT.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
