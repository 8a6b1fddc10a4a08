"""Run one replica configuration over several device splits, two at a time, and summarise.

``--set inner`` (default): the 4 inner splits of the official training devices (``--exclude-official
--salt cvN``), the only runs settings are chosen on; ``--set outer``: the official split and salts
1-5 (reported, never chosen on). Extra arguments go to ``scripts/nab_replica.py``, which runs the
product's ``device.step`` and ``FedBuffState.offer``.

    nice -n 10 .venv/bin/python scripts/nab_cv.py --set outer
    nice -n 10 .venv/bin/python scripts/nab_cv.py --set inner -- --aggregator fedavg
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import nab_replica  # noqa: E402

SETS = {"inner": [("cv1", True), ("cv2", True), ("cv3", True), ("cv4", True)],
        "outer": [("", False), ("1", False), ("2", False), ("3", False), ("4", False), ("5", False)]}  # fmt: skip
_DATA: dict = {}


def _one(job: tuple[str, bool, list[str]]) -> dict:
    salt, exclude, extra = job
    args = nab_replica.parse_args([*extra, "--salt", salt] + (["--exclude-official"] if exclude else []))
    res = nab_replica.run(args, _DATA[exclude])
    g, c = res["models"]["global"], res["models"]["central"]
    z = res["models"]["zrule_refractory"]
    st = res.get("stability", {})
    return {
        "split": salt or "official", "devices": res["eval"]["devices"], "global_nab": g["nab_standard"],
        "central_nab": c["nab_standard"], "zrule_refractory_nab": z["nab_standard"],
        # with --threshold-scope device (the default), both models with the fleet threshold as it is
        "global_fleet_nab": res["models"].get("global_fleet_threshold", {}).get("nab_standard"),
        "central_fleet_nab": res["models"].get("central_fleet_threshold", {}).get("nab_standard"),
        "prequential_nab": res["models"].get("prequential_global", {}).get("nab_standard"),
        "event_recall": g["event_recall"], "fa": g["false_alarms_per_1000"], "roc_auc": g["roc_auc"],
        "central_roc_auc": c["roc_auc"], "f1": g["f1"], "stability": st.get("ratio"),
        "nab_min2": st.get("second_half_nab_min"), "nab_max2": st.get("second_half_nab_max"),
    }  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--set", choices=tuple(SETS), default="inner")
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--json", default=None)
    p.add_argument("rest", nargs="*")
    a = p.parse_args()
    base = nab_replica.parse_args(a.rest)
    for _salt, exclude in SETS[a.set]:
        if exclude not in _DATA:
            _DATA[exclude] = nab_replica.nab_data(base.csv, base.batch, base.rate, exclude)
    jobs = [(salt, exclude, a.rest) for salt, exclude in SETS[a.set]]
    with mp.get_context("fork").Pool(a.procs) as pool:
        rows = pool.map(_one, jobs)
    keys = list(rows[0])[1:]
    print("| split | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")

    def f(v):  # noqa: ANN001, ANN202
        return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) and abs(v) < 2 else f"{v:.1f}")

    for r in rows:
        print(f"| {r['split']} | " + " | ".join(f(r[k]) for k in keys) + " |")
    mean = {k: float(np.mean([r[k] for r in rows if r[k] is not None])) for k in keys}
    print("| mean | " + " | ".join(f(mean[k]) for k in keys) + " |")
    print("args:", " ".join(a.rest))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"rows": rows, "mean": mean, "args": a.rest}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
