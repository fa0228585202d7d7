"""COVID-19 chest X-rays: survival (death) and ICU admission from image only, clinical only and fused models,
AUC with patient-level bootstrap 95% CIs, on one fixed patient-level split per outcome.

Run: ``MEDSIGHT_THREADS=1 MEDSIGHT_DATA=../shared/data .venv/bin/python benchmarks/covid_outcome.py --time-budget 240``
Each outcome trains the outcome task on ``<data>/covid_cxr_lung_boxes#<outcome>`` (CNN on 128x128 downsized images,
the same as ``medsight train``) and evaluates on the test split. Writes ``benchmarks/results/covid_outcome.json``
(figures with CIs, the command, commit, date and seeds) and ``<out>/summary.json``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from support.provenance import provenance

from medsight import tasks
from medsight.io.atomic import write_json

RESULTS = Path(__file__).resolve().parent / "results" / "covid_outcome.json"


def _fmt(m: dict[str, Any]) -> str:
    lo, hi = m["ci95"]
    val = "nan" if m["value"] is None else f"{m['value']:.3f}"
    return val + ("" if lo is None else f" [{lo:.3f}, {hi:.3f}]")


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
    ap.add_argument("--results", type=Path, default=RESULTS, help="results JSON to write")
    args = ap.parse_args()
    task = tasks.get("outcome")
    summary: dict[str, Any] = {}
    for name in args.outcomes:
        spec = f"{args.data}#{name}"
        start = time.monotonic()
        options = task.Options.from_mapping(
            {"seed": args.seed, "epochs": args.epochs, "time_budget_s": args.time_budget}, "outcome"
        )
        meta = task.train(spec, args.out / f"{name}_bundle", options)
        trained = time.monotonic() - start
        r = task.evaluate(args.out / f"{name}_bundle", spec, "test", args.out / f"{name}_eval", args.bootstrap)
        total = time.monotonic() - start
        sel = meta["selection"]
        c = r["counts"]
        print(
            f"\n{name} (positive = {meta['target']['name']}): test {c['images']} images of {c['patients']} patients; "
            f"{c['patients_with_event']} patients with the outcome ({c['images_with_event']} of their images); split "
            f"{meta['data']['n']} images, {meta['data']['n_patients']} patients; "
            f"rows left out {meta['data']['excluded']}"
        )
        print(
            f"training {trained:.0f} s (CNN {meta['training']['epochs_run']} epochs, best "
            f"{meta['training']['best_epoch']}, {meta['training']['seconds']} s); total wall {total:.0f} s"
        )
        print("val AUC: " + ", ".join(f"{k} {v:.3f}" for k, v in sel["val_auc"].items()))
        print(f"deployed: {sel['selected']} (fusion kept: {sel['fusion_kept']})")
        for k, v in r["metrics"].items():
            if not k.startswith(("auc", "delta", "selected_sens", "selected_spec", "selected_auc_per_patient")):
                continue
            lo, hi = v["ci95"]
            val = "nan" if v["value"] is None else f"{v['value']:.3f}"
            print(f"  {k:40s} {val}" + ("" if lo is None else f" [{lo:.3f}, {hi:.3f}]"))
        sp = r.get("selective_prediction")
        if sp:
            sm = sp["metrics"]
            print(
                "  prediction sets: "
                + ", ".join(f"{k} {_fmt(sm[k])}" for k in ("coverage", "mean_set_size", "share_deferred", "error_kept"))
                + f"; AURC {sp['aurc']:.3f}"
            )
        summary[name] = {
            "target": meta["target"]["name"],
            "test": {
                "n_images": c["images"],
                "n_patients": c["patients"],
                "images_with_event": c["images_with_event"],
                "patients_with_event": c["patients_with_event"],
                "images_per_patient": c["images_per_patient"],
            },
            "metrics_unit": r["metrics_unit"],
            "metrics": r["metrics"],
            "selective_prediction": None
            if not sp
            else {
                "rule": sp["rule"],
                "metrics": sp["metrics"],
                "aurc": sp["aurc"],
                "deferred": sp["deferred"],
                "reasons": sp["reasons"],
            },
            "selection": sel,
            "operating_point": meta["operating_point"],
            "cnn": {
                "epochs_run": meta["training"]["epochs_run"],
                "best_epoch": meta["training"]["best_epoch"],
                "stopped_by": meta["training"]["stopped_by"],
                "seconds": meta["training"]["seconds"],
                "warnings": meta["training"]["warnings"],
            },
            "train_s": round(trained, 1),
            "total_s": round(total, 1),
        }
    write_json(args.out / "summary.json", summary)
    record = {
        "benchmark": "covid_outcome",
        **provenance("covid_outcome.py", ("src/medsight",)),
        "seeds": [args.seed],
        "settings": {"epochs": args.epochs, "time_budget_s": args.time_budget, "bootstrap": args.bootstrap},
        "ci95": f"percentile bootstrap over patients ({args.bootstrap} resamples)",
        "unit": "metrics per image (patients have several images); CIs resample patients; test counts in images "
        "and patients, events per patient",
        "outcomes": summary,
    }
    write_json(args.results, record)
    print(f"\nresults: {args.results}")


if __name__ == "__main__":
    main()
