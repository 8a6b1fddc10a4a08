"""Memory (RSS) and CPU of every process of one FLEAD stack, sampled while it runs.

    python scripts/topology_resources.py --home .flead --seconds 240 [--every 5] > resources.json

A process belongs to the stack when its command line names the state folder (brokers, the site
brokers, MirrorMaker) or its environment has ``FLEAD_HOME`` set to it (workers, simulators,
Spark jobs started by ``flead demo``). Each is sampled from ``/proc``: peak and mean RSS, and CPU
as a share of one core over the time it was seen. Linux only; reads nothing but ``/proc``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def kind(cmd: str, home: str) -> str:
    if "kafka.Kafka" in cmd:
        return "site broker" if f"{home}/sites/" in cmd else "central broker"
    if "connect.mirror.MirrorMaker" in cmd:
        return "MirrorMaker 2"
    if "faust" in cmd and "worker" in cmd:
        return "worker"
    if " simulate" in cmd:
        return "simulator"
    if "spark" in cmd or "pyspark" in cmd or "SparkSubmit" in cmd:
        return "spark"
    return "other"


def ours(pid: int, home: str) -> str | None:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        if home in cmd:
            return cmd
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    return cmd if f"FLEAD_HOME={home}".encode() in env and cmd else None


def sample(home: str) -> dict[int, tuple[str, int, int]]:
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        cmd = ours(pid, home)
        if cmd is None or "topology_resources" in cmd:
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            statm = (entry / "statm").read_text().split()
        except OSError:
            continue
        ticks = int(stat[11]) + int(stat[12])  # utime + stime
        out[pid] = (cmd, ticks, int(statm[1]) * PAGE)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--home", required=True)
    p.add_argument("--seconds", type=float, default=240)
    p.add_argument("--every", type=float, default=5)
    args = p.parse_args()
    home = str(Path(args.home).resolve())
    seen: dict[int, dict] = {}
    totals = []
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        now = time.monotonic()
        snap = sample(home)
        for pid, (cmd, ticks, rss) in snap.items():
            s = seen.setdefault(pid, {"kind": kind(cmd, home), "cmd": cmd[:160], "first": (now, ticks), "rss": []})
            s["last"] = (now, ticks)
            s["rss"].append(rss)
        totals.append(sum(rss for _, _, rss in snap.values()))
        time.sleep(args.every)
    procs = []
    for pid, s in seen.items():
        (t0, c0), (t1, c1) = s["first"], s["last"]
        procs.append({
            "pid": pid, "kind": s["kind"], "cmd": s["cmd"],
            "peak_rss_mb": round(max(s["rss"]) / 2**20, 1),
            "mean_rss_mb": round(sum(s["rss"]) / len(s["rss"]) / 2**20, 1),
            "cpu_core_share": round((c1 - c0) / TICK / (t1 - t0), 3) if t1 > t0 else None,
            "seconds_seen": round(t1 - t0, 1),
        })  # fmt: skip
    by_kind: dict[str, dict] = {}
    for pr in procs:
        k = by_kind.setdefault(pr["kind"], {"processes": 0, "peak_rss_mb": 0.0, "cpu_core_share": 0.0})
        k["processes"] += 1
        k["peak_rss_mb"] = round(k["peak_rss_mb"] + pr["peak_rss_mb"], 1)
        k["cpu_core_share"] = round(k["cpu_core_share"] + (pr["cpu_core_share"] or 0.0), 3)
    print(json.dumps({"home": home, "samples": len(totals), "peak_total_rss_mb": round(max(totals) / 2**20, 1),
                      "by_kind": by_kind, "processes": sorted(procs, key=lambda x: x["kind"])}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
