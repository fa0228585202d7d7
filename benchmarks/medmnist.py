"""PneumoniaMNIST and BreastMNIST at 28 px, 3 seeds each: test AUC and ACC beside MedMNIST v2's numbers.

Run: ``make benchmarks`` or ``MEDSIGHT_DATA=../shared/data .venv/bin/python benchmarks/medmnist.py``
Options: ``--sets pneumoniamnist breastmnist --seeds 0 1 2 --epochs 40 --time-budget 540``.
Each run trains with ``medsight train`` defaults (plus the time budget), then evaluates on the official
test split. ACC is reported as MedMNIST defines it (threshold 0.5) and at the operating point chosen on val.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from medsight.pipelines import classification

#: MedMNIST v2 (Yang et al., Scientific Data 2023), test AUC / ACC, and the goals in targets.md.
BASELINES = {
    "pneumoniamnist": {
        "ResNet-18 (28)": (0.944, 0.854),
        "ResNet-50 (224)": (0.962, 0.884),
        "AutoML Vision": (0.991, 0.946),
        "goal": (0.99, 0.95),
    },
    "breastmnist": {
        "ResNet-18 (28)": (0.901, 0.863),
        "ResNet-50 (224)": (0.866, 0.842),
        "AutoML Vision": (0.919, 0.861),
        "goal": (0.93, 0.89),
    },
}


def run_one(flag: str, seed: int, epochs: int, budget: float, work: Path) -> dict[str, float]:
    bundle, evaluation = work / f"{flag}_{seed}", work / f"{flag}_{seed}_eval"
    start = time.monotonic()
    meta = classification.train(f"medmnist:{flag}", bundle, seed=seed, epochs=epochs, time_budget_s=budget)
    train_s = time.monotonic() - start
    result = classification.evaluate(bundle, f"medmnist:{flag}", "test", evaluation)
    m, at05 = result["metrics"], result["operating_point"]["at_0.5"]
    return {
        "seed": seed,
        "auc": m["auc"]["value"],
        "auc_ci95": m["auc"]["ci95"],
        "acc_at_0.5": at05["accuracy"]["value"],
        "acc_at_0.5_ci95": at05["accuracy"]["ci95"],
        "acc_at_operating_point": m["accuracy"]["value"],
        "sensitivity": m["sensitivity"]["value"],
        "specificity": m["specificity"]["value"],
        "ece_after_calibration": m["ece"]["value"],
        "epochs_run": meta["training"]["epochs_run"],
        "best_epoch": meta["training"]["best_epoch"],
        "train_seconds": round(train_s, 1),
        "total_seconds": round(time.monotonic() - start, 1),
    }


def mean_sd(runs: list[dict[str, float]], key: str) -> str:
    vals = [r[key] for r in runs]
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.3f} ± {sd:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["pneumoniamnist", "breastmnist"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--time-budget", type=float, default=540.0, help="training seconds per run (< 10 min)")
    parser.add_argument("--json", type=Path, help="also write all runs to this JSON file")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for flag in args.sets:
            runs[flag] = []
            for seed in args.seeds:
                r = run_one(flag, seed, args.epochs, args.time_budget, Path(tmp))
                runs[flag].append(r)
                print(
                    f"{flag} seed {seed}: AUC {r['auc']:.4f} {r['auc_ci95']}, ACC@0.5 {r['acc_at_0.5']:.4f}, "
                    f"ACC@op {r['acc_at_operating_point']:.4f}, {r['epochs_run']} epochs, "
                    f"{r['train_seconds']} s training, {r['total_seconds']} s with evaluation",
                    flush=True,
                )
    print()
    print("| data set | model | test AUC | test ACC (0.5) | ACC at val operating point | train s/run |")
    print("|---|---|---|---|---|---|")
    for flag, rs in runs.items():
        secs = statistics.mean(r["train_seconds"] for r in rs)
        print(
            f"| {flag} | medsight ResNet (28 px), {len(rs)} seeds | {mean_sd(rs, 'auc')} | "
            f"{mean_sd(rs, 'acc_at_0.5')} | "
            f"{mean_sd(rs, 'acc_at_operating_point')} | {secs:.0f} |"
        )
        for name, (auc, acc) in BASELINES[flag].items():
            print(f"| {flag} | {name} | {auc:.3f} | {acc:.3f} | | |")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
