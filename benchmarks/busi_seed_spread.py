"""How far BUSI's validation figure moves with the training seed alone: the run of record's command with another
``--seed``, set beside the run of record's folds (seed 0). A measurement fixed in docs/benchmarks.md before its runs;
it decides nothing, and tells a later screen how large a difference must be to be more than training noise.

Run: ``.venv/bin/python benchmarks/busi_seed_spread.py --runs A.json B.json [--results R.json]`` (``busi.py`` results
files of the other seed). Writes ``benchmarks/results/busi_seed_spread.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from busi_whole_image import fold_entries, summary, val_before_gate
from support.provenance import provenance
from support.seg_record import RESULTS

from medsight.io.atomic import write_json


def spread(record: dict[str, Any], others: list[dict[str, Any]]) -> dict[str, Any]:
    """Per fold: each seed's validation Dice before the gate and test Dice, and the gap between the seeds."""
    reference = {f["fold"]: f for f in record["segmentation"]["folds"]}
    rows = []
    for entry in sorted(others, key=lambda e: e["fold"]):
        base = reference[entry["fold"]]
        rows.append(
            {
                "fold": entry["fold"],
                "seed": entry.get("seed"),
                "val_dice_before_gate": {"seed_0": val_before_gate(base), "other_seed": val_before_gate(entry)},
                "test_dice": {"seed_0": base["dice"]["value"], "other_seed": entry["dice"]["value"]},
                "val_gap": abs(val_before_gate(entry) - val_before_gate(base)),
                "test_gap": abs(entry["dice"]["value"] - base["dice"]["value"]),
                "other_seed_run": summary(entry),
            }
        )
    return {"folds": rows, "largest_val_gap": max(r["val_gap"] for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="busi.py results of the other seed")
    parser.add_argument("--reference", type=Path, default=RESULTS / "busi.json", help="the run of record (seed 0)")
    parser.add_argument("--results", type=Path, default=RESULTS / "busi_seed_spread.json")
    args = parser.parse_args()
    record = json.loads(args.reference.read_text(encoding="utf-8"))
    others = []
    for path in args.runs:
        seed = json.loads(path.read_text(encoding="utf-8"))["provenance"].get("seeds", [None])[0]
        others += [{**entry, "seed": seed} for entry in fold_entries(path)]
    result = {"provenance": provenance("busi_seed_spread.py"), **spread(record, others)}
    write_json(args.results, result)
    print(json.dumps({k: v for k, v in result.items() if k != "provenance"}, indent=1)[:2000])


if __name__ == "__main__":
    main()
