#!/usr/bin/env python3
"""The report of `bench/run.sh --direct`: Duet with direct I/O, tgt with --bstype aio and local fio.

Standard library only; shares report.py's helpers. Subcommands:

  fio FILE K=V...                 one record (JSON line) from fio's --output-format=json
  summary RAW FACTS PARAMS OUT    Markdown on stdout, everything in OUT
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report as r  # noqa: E402

TARGETS = ("duet", "tgt", "fio")


def fio_record(path, extra):
    """fio's JSON (one job) as a record with duet-load's fields: IOPS, MiB/s, total latency."""
    doc = r.load_json_file(path)
    rec = dict(extra)
    rec["client"] = "fio"
    job = (doc or {}).get("jobs", [None])[0] if doc else None
    side = None
    if job:
        side = job.get("write") if rec.get("op") == "write" else job.get("read")
    if not side or not side.get("total_ios"):
        rec["ok"] = False
        return rec
    pct = (side.get("lat_ns") or {}).get("percentile") or (side.get("clat_ns") or {}).get("percentile") or {}

    def us(key):
        v = pct.get(key)
        return v / 1000.0 if isinstance(v, (int, float)) else None

    iops = side.get("iops")
    bs = int(rec.get("block_size", 0))
    rec.update(
        {
            "iops": iops,
            "mib_s": iops * bs / 1048576.0 if iops is not None else None,
            "lat_mean_us": (side.get("lat_ns") or {}).get("mean", 0) / 1000.0,
            "lat_p50_us": us("50.000000"),
            "lat_p99_us": us("99.000000"),
            "errors": job.get("error", 0),
            "ok": job.get("error", 0) == 0 and rec.get("rc", 0) == 0,
        }
    )
    return rec


def summarize(runs):
    out = []
    for (workload,) in r.ordered_keys(runs, ["workload"]):
        cell = [x for x in runs if x.get("workload") == workload]
        s = {t: r.stats_of([x for x in cell if x.get("target") == t]) for t in TARGETS}
        d, t, f = s["duet"], s["tgt"], s["fio"]
        out.append(
            {
                "workload": workload,
                "label": cell[0].get("label", workload),
                "block_size": cell[0].get("block_size"),
                "qd": cell[0].get("qd"),
                **s,
                "duet_vs_fio_iops": r.ratio(d["iops"], f["iops"]),
                "duet_vs_tgt_iops": r.ratio(d["iops"], t["iops"]),
                "duet_vs_fio_p50": r.ratio(d["lat_p50_us"], f["lat_p50_us"]),
                "duet_vs_tgt_p50": r.ratio(d["lat_p50_us"], t["lat_p50_us"]),
            }
        )
    return out


def checks_of(summary):
    checks = []
    for s in summary:
        name = s["label"]
        # At QD1 both targets wait for the device; the latency target below covers those rows.
        if s["block_size"] == 4096 and s["qd"] == 32:
            checks.append(r.check(f"{name}: Duet / local fio IOPS", s["duet_vs_fio_iops"], ">=", 0.8))
            checks.append(r.check(f"{name}: Duet / tgt-aio IOPS", s["duet_vs_tgt_iops"], ">=", 1.5))
        if s["qd"] == 1:
            checks.append(r.check(f"{name}: Duet / local fio p50 latency", s["duet_vs_fio_p50"], "<=", 1.3))
    return checks


def render(summary, checks, facts, params):
    out = [
        f"## Direct I/O: Duet vs tgt (aio) vs local fio ({facts.get('nproc')} CPUs, "
        f"{facts.get('cpu_model')}, kernel {facts.get('kernel')}; duetd {facts.get('duetd_git_rev')}, "
        f"tgtd {facts.get('tgtd_version')}, {facts.get('fio_version')})",
        "",
        f"LUN files on {params.get('fs_type')} ({params.get('dir')}), {params.get('lun_mib')} MiB each, "
        f"random content, 512-byte blocks. Duet: `direct = true` (media I/O: {params.get('media_path')}); "
        "tgt: `--bstype aio`; fio: `--ioengine=io_uring --direct=1` on a file of the same file system, "
        f"one job. One session / job per run; {params.get('duration_s')} s per run after "
        f"{params.get('warmup_s')} s warm-up; {params.get('rounds')} round(s) per target, rotating "
        "the order; medians. Latency: per command, submission to completion, µs (duet-load; fio's "
        "total latency). CPU = the target process's user+system seconds per GiB moved." + r.pinning(params),
        "",
    ]
    headers = [
        "workload", "fio IOPS", "Duet IOPS", "tgt-aio IOPS", "Duet/fio", "Duet/tgt",
        "fio p50/p99 µs", "Duet p50/p99 µs", "tgt p50/p99 µs", "Duet/fio p50",
        "Duet CPU s/GiB", "tgt CPU s/GiB",
    ]
    rows = []
    for s in summary:
        d, t, f = s["duet"], s["tgt"], s["fio"]
        rows.append(
            [
                s["label"], r.fmt(f["iops"]), r.fmt(d["iops"]), r.fmt(t["iops"]),
                r.fmt_ratio(s["duet_vs_fio_iops"]), r.fmt_ratio(s["duet_vs_tgt_iops"]),
                r.fmt_lat(f["lat_p50_us"], f["lat_p99_us"]), r.fmt_lat(d["lat_p50_us"], d["lat_p99_us"]),
                r.fmt_lat(t["lat_p50_us"], t["lat_p99_us"]), r.fmt_ratio(s["duet_vs_fio_p50"]),
                r.fmt(d["cpu_s_per_gib"], 2), r.fmt(t["cpu_s_per_gib"], 2),
            ]
        )
    out.append(r.table(headers, rows) if rows else "(no runs)")
    out += ["", "### Targets (informative)", ""]
    out.extend(r.check_line(c) for c in checks)
    return "\n".join(out)


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "fio":
        print(json.dumps(fio_record(sys.argv[2], r.pairs(sys.argv[3:]))))
    elif len(sys.argv) == 6 and sys.argv[1] == "summary":
        raw, facts, params, out = sys.argv[2:]
        runs = r.read_jsonl(raw)
        facts = r.load_json_file(facts) or {}
        params = r.load_json_file(params) or {}
        summary = summarize(runs)
        checks = checks_of(summary)
        failed = sum(1 for x in runs if not x.get("ok"))
        text = render(summary, checks, facts, params)
        if failed:
            text += f"\n\n**{failed} run(s) failed**; see `runs` in {out}."
        print(text)
        r.write_out(
            out,
            {
                "kind": "direct",
                "machine": facts,
                "params": params,
                "summary": summary,
                "checks": checks,
                "failed_runs": failed,
                "runs": runs,
                "markdown": text,
            },
        )
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
