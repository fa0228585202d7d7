"""COVID-19 chest X-rays: survival (death) and ICU admission from image only, clinical only and fused models,
AUC with patient-level bootstrap 95% CIs, on one fixed patient-level split per outcome.

Run: ``MEDSIGHT_DATA=../shared/data .venv/bin/python benchmarks/covid_outcome.py --time-budget 300``
Each outcome trains ``medsight train <data>/covid_cxr_lung_boxes#<outcome>`` (CNN on 128x128 downsized images) and
evaluates on the test split.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from medsight.pipelines import outcome


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--data", type=Path, default=Path(os.environ.get("MEDSIGHT_DATA", "../shared/data")) / "covid_cxr_lung_boxes"
    )
    ap.add_argument("--out", type=Path, default=Path("benchmark_out/covid_outcome"))
    ap.add_argument("--outcomes", nargs="+", default=["survival", "icu"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--time-budget", type=float, default=300.0)
    ap.add_argument("--bootstrap", type=int, default=1000)
    args = ap.parse_args()
    summary = {}
    for name in args.outcomes:
        spec = f"{args.data}#{name}"
        start = time.monotonic()
        meta = outcome.train(
            spec, args.out / f"{name}_bundle", seed=args.seed, epochs=args.epochs, time_budget_s=args.time_budget
        )
        trained = time.monotonic() - start
        r = outcome.evaluate(
            args.out / f"{name}_bundle", spec, "test", args.out / f"{name}_eval", n_boot=args.bootstrap
        )
        total = time.monotonic() - start
        sel = meta["selection"]
        print(
            f"\n{name} (positive = {meta['target']['name']}): test n = {r['n']} images / {r['n_patients']} patients, "
            f"{r['positives']} positive; split {meta['data']['n']}; rows left out {meta['data']['excluded']}"
        )
        print(
            f"training {trained:.0f} s (CNN {meta['training']['epochs_run']} epochs, best "
            f"{meta['training']['best_epoch']}); total wall {total:.0f} s"
        )
        print("val AUC: " + ", ".join(f"{k} {v:.3f}" for k, v in sel["val_auc"].items()))
        print(f"deployed: {sel['selected']} (fusion kept: {sel['fusion_kept']})")
        for k, v in r["metrics"].items():
            if not k.startswith(("auc", "delta", "selected_sens", "selected_spec")):
                continue
            lo, hi = v["ci95"]
            val = "nan" if v["value"] is None else f"{v['value']:.3f}"
            print(f"  {k:40s} {val}" + ("" if lo is None else f" [{lo:.3f}, {hi:.3f}]"))
        summary[name] = {"metrics": r["metrics"], "selection": sel, "train_s": trained}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
