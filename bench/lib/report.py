#!/usr/bin/env python3
"""Small helpers of the benchmark scripts: JSON records, iscsi-perf parsing, tables.

Standard library only. Subcommands (see `report.py -h`):

  kv K=V...                       one JSON object from K=V pairs (V parsed as JSON if it can be)
  record [--json FILE] K=V...     FILE's JSON object (if given and valid) plus K=V, on one line
  brief                           one line about a record (stdin) for progress output
  perf FILE...                    sum of the final "iops average N (M MB/s)" of iscsi-perf outputs
  ha LUN                          "role local_alua link_state" of LUN from `duetctl ha --json` (stdin)
  field KEY [DEFAULT]             one top-level field of a JSON object on stdin
  single|lab|failover RAW FACTS PARAMS OUT
                                  summary of the raw runs (JSON lines): Markdown on stdout,
                                  everything in OUT
"""

import argparse
import json
import math
import re
import statistics
import sys

# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------


def parse_value(text):
    """A K=V value: JSON when it parses as a number, bool, null, list or object; else a string."""
    try:
        v = json.loads(text)
    except ValueError:
        return text
    # A short git revision such as 325e81 is JSON for a huge float: keep exponents out.
    if isinstance(v, float) and ("e" in text or "E" in text):
        return text
    return v if not isinstance(v, str) else text


def pairs(items):
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"report.py: `{item}`: expected KEY=VALUE")
        out[key] = parse_value(value)
    return out


def load_json_file(path):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
    except OSError:
        return None
    if not text:
        return None
    # Some clients print progress lines before the JSON: take the last line that parses.
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                v = json.loads(line)
            except ValueError:
                continue
            if isinstance(v, dict):
                return v
    try:
        v = json.loads(text)
    except ValueError:
        return None
    return v if isinstance(v, dict) else None


def read_jsonl(path):
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        rows.append(json.loads(line))
                    except ValueError:
                        pass
    except OSError:
        pass
    return rows


def median(values):
    values = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    return statistics.median(values) if values else None


def nearest_rank(values, p):
    """The p-th percentile (0-100) by the nearest-rank method."""
    values = sorted(v for v in values if isinstance(v, (int, float)))
    if not values:
        return None
    k = max(1, math.ceil(p / 100.0 * len(values)))
    return values[k - 1]


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt(v, digits=0):
    if v is None:
        return "-"
    if digits == 0:
        return f"{v:,.0f}".replace(",", " ")
    return f"{v:.{digits}f}"


def fmt_ratio(v):
    return "-" if v is None else f"{v:.2f}"


def fmt_lat(p50, p99):
    if p50 is None and p99 is None:
        return "-"
    return f"{fmt(p50)}/{fmt(p99)}"


def table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(lines)


def write_out(path, doc):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, sort_keys=False)
        f.write("\n")


def cpu_per_gib(run):
    cpu, moved = run.get("target_cpu_s"), run.get("bytes")
    if cpu is None or not moved:
        return None
    return cpu / (moved / float(1 << 30))


def stats_of(runs):
    """Medians over the successful runs of one (workload, sessions, target) cell."""
    ok = [r for r in runs if r.get("ok")]
    return {
        "n": len(ok),
        "failed": len(runs) - len(ok),
        "iops": median([r.get("iops") for r in ok]),
        "mib_s": median([r.get("mib_s") for r in ok]),
        "lat_mean_us": median([r.get("lat_mean_us") for r in ok]),
        "lat_p50_us": median([r.get("lat_p50_us") for r in ok]),
        "lat_p99_us": median([r.get("lat_p99_us") for r in ok]),
        "cpu_s_per_gib": median([cpu_per_gib(r) for r in ok]),
        "client_cpu_s": median([r.get("client_cpu_s") for r in ok]),
    }


def ordered_keys(runs, fields):
    """Distinct values of `fields` in first-seen order."""
    seen, out = set(), []
    for r in runs:
        k = tuple(r.get(f) for f in fields)
        if k not in seen:
            seen.add(k)
            out.append(k)
    return out


# ---------------------------------------------------------------------------------------------
# run.sh: Duet vs tgt
# ---------------------------------------------------------------------------------------------


def summarize_single(runs):
    summary = []
    for kind, workload, sessions in ordered_keys(runs, ["client", "workload", "sessions"]):
        cell = [r for r in runs if (r.get("client"), r.get("workload"), r.get("sessions")) == (kind, workload, sessions)]
        label = cell[0].get("label", workload)
        duet = stats_of([r for r in cell if r.get("target") == "duet"])
        tgt = stats_of([r for r in cell if r.get("target") == "tgt"])
        summary.append(
            {
                "client": kind,
                "workload": workload,
                "label": label,
                "block_size": cell[0].get("block_size"),
                "qd": cell[0].get("qd"),
                "sessions": sessions,
                "duet": duet,
                "tgt": tgt,
                "iops_ratio": ratio(duet["iops"], tgt["iops"]),
                "mib_s_ratio": ratio(duet["mib_s"], tgt["mib_s"]),
                "p50_ratio": ratio(duet["lat_p50_us"], tgt["lat_p50_us"]),
            }
        )
    return summary


def checks_single(summary):
    checks = []
    for s in summary:
        if s["client"] != "duet-load":
            continue
        name = f"{s['label']}, {s['sessions']} session(s)"
        if s["block_size"] == 4096:
            checks.append(check(f"{name}: IOPS ratio", s["iops_ratio"], ">=", 1.5))
        if s["block_size"] == 131072:
            checks.append(check(f"{name}: MiB/s ratio", s["mib_s_ratio"], ">=", 2.0))
        if s["qd"] == 1:
            checks.append(check(f"{name}: p50 latency ratio", s["p50_ratio"], "<=", 0.8))
    return checks


def check(name, value, op, bound):
    if value is None:
        met = None
    elif op == ">=":
        met = value >= bound
    else:
        met = value <= bound
    return {"check": name, "value": value, "op": op, "bound": bound, "met": met}


def check_line(c):
    verdict = {True: "met", False: "NOT met", None: "no data"}[c["met"]]
    value = c["value"]
    shown = str(int(value)) if isinstance(value, int) else fmt_ratio(value)
    op = c["op"].replace(">=", "≥").replace("<=", "≤")
    return f"- {c['check']} {shown} {op} {c['bound']}: **{verdict}**"


def pinning(params):
    """The sentence on CPU pinning for a report's header; empty when nothing was pinned."""
    t, c = (str(params.get(k) if params.get(k) is not None else "") for k in ("pin_target", "pin_client"))
    if not t and not c:
        return ""
    parts = []
    if t:
        parts.append(f"targets on CPU {t}")
    if c:
        parts.append(f"clients on CPU {c}")
    return " Pinned: " + ", ".join(parts) + "."


def render_single(summary, checks, facts, params):
    out = []
    out.append(
        f"## Duet vs tgt, one controller ({facts.get('nproc')} CPUs, {facts.get('cpu_model')}, "
        f"kernel {facts.get('kernel')}; duetd {facts.get('duetd_git_rev')}, tgtd {facts.get('tgtd_version')})"
    )
    out.append("")
    out.append(
        f"LUNs on tmpfs, {params.get('lun_mib')} MiB, 512-byte blocks; {params.get('duration_s')} s per run "
        f"after {params.get('warmup_s')} s warm-up; {params.get('rounds')} round(s) per target, alternating; "
        "medians. Latencies in µs (duet-load). Ratios are Duet / tgt. CPU = the target process's "
        "user+system seconds per GiB moved."
        + pinning(params)
    )
    out.append("")
    headers = [
        "workload", "sessions", "Duet IOPS", "tgt IOPS", "ratio", "Duet MiB/s", "tgt MiB/s", "ratio",
        "Duet p50/p99 µs", "tgt p50/p99 µs", "p50 ratio", "Duet CPU s/GiB", "tgt CPU s/GiB",
    ]
    rows = []
    for s in summary:
        if s["client"] != "duet-load":
            continue
        d, t = s["duet"], s["tgt"]
        rows.append(
            [
                s["label"], s["sessions"], fmt(d["iops"]), fmt(t["iops"]), fmt_ratio(s["iops_ratio"]),
                fmt(d["mib_s"], 1), fmt(t["mib_s"], 1), fmt_ratio(s["mib_s_ratio"]),
                fmt_lat(d["lat_p50_us"], d["lat_p99_us"]), fmt_lat(t["lat_p50_us"], t["lat_p99_us"]),
                fmt_ratio(s["p50_ratio"]), fmt(d["cpu_s_per_gib"], 2), fmt(t["cpu_s_per_gib"], 2),
            ]
        )
    out.append(table(headers, rows) if rows else "(no duet-load runs)")
    perf = [s for s in summary if s["client"] == "iscsi-perf"]
    if perf:
        out.append("")
        out.append("Second client, libiscsi's iscsi-perf (reads only; one process per session, summed):")
        out.append("")
        headers = ["workload", "sessions", "Duet IOPS", "tgt IOPS", "ratio", "Duet MiB/s", "tgt MiB/s",
                   "Duet CPU s/GiB", "tgt CPU s/GiB"]
        rows = []
        for s in perf:
            d, t = s["duet"], s["tgt"]
            rows.append(
                [
                    s["label"], s["sessions"], fmt(d["iops"]), fmt(t["iops"]), fmt_ratio(s["iops_ratio"]),
                    fmt(d["mib_s"], 1), fmt(t["mib_s"], 1), fmt(d["cpu_s_per_gib"], 2), fmt(t["cpu_s_per_gib"], 2),
                ]
            )
        out.append(table(headers, rows))
    out.append("")
    out.append("### Targets (informative; duet-load rows)")
    out.append("")
    out.extend(check_line(c) for c in checks)
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# lab.sh: direct vs through the secondary
# ---------------------------------------------------------------------------------------------


def summarize_lab(runs):
    summary = []
    for mode, workload in ordered_keys(runs, ["mode", "workload"]):
        cell = [r for r in runs if (r.get("mode"), r.get("workload")) == (mode, workload)]
        direct = stats_of([r for r in cell if r.get("path") == "direct"])
        second = stats_of([r for r in cell if r.get("path") == "secondary"])
        summary.append(
            {
                "mode": mode,
                "workload": workload,
                "label": cell[0].get("label", workload),
                "direct": direct,
                "secondary": second,
                "iops_ratio": ratio(second["iops"], direct["iops"]),
                "mib_s_ratio": ratio(second["mib_s"], direct["mib_s"]),
                "p50_ratio": ratio(second["lat_p50_us"], direct["lat_p50_us"]),
            }
        )
    return summary


def render_lab(summary, checks, facts, params):
    out = [
        f"## Duet lab: direct (ctrl-a, primary) vs through ctrl-b (secondary) ({facts.get('nproc')} CPUs, "
        f"kernel {facts.get('kernel')}; duetd {facts.get('duetd_git_rev')})",
        "",
        f"LUN file on {params.get('fs_type', 'tmpfs')} ({params.get('dir', '/dev/shm')}), opened with O_DIRECT "
        f"by both controllers (descriptors with O_DIRECT per controller: {params.get('lun_direct_fds', '?')}), "
        f"{params.get('lun_mib')} MiB; 1 session; {params.get('duration_s')} s per run after "
        f"{params.get('warmup_s')} s warm-up; {params.get('rounds')} round(s) per path, alternating; medians. "
        "Mode 2: ctrl-b forwards every command to ctrl-a over the HA link; mode 1: ctrl-b does the I/O on the "
        "shared file itself. Ratio = via ctrl-b / direct. CPU = both controllers' user+system seconds per GiB.",
        "",
    ]
    headers = ["mode", "workload", "direct IOPS", "via ctrl-b IOPS", "ratio", "direct MiB/s", "via ctrl-b MiB/s",
               "ratio", "direct p50/p99 µs", "via ctrl-b p50/p99 µs", "direct CPU s/GiB", "via ctrl-b CPU s/GiB"]
    rows = []
    for s in summary:
        d, b = s["direct"], s["secondary"]
        rows.append(
            [
                s["mode"], s["label"], fmt(d["iops"]), fmt(b["iops"]), fmt_ratio(s["iops_ratio"]),
                fmt(d["mib_s"], 1), fmt(b["mib_s"], 1), fmt_ratio(s["mib_s_ratio"]),
                fmt_lat(d["lat_p50_us"], d["lat_p99_us"]), fmt_lat(b["lat_p50_us"], b["lat_p99_us"]),
                fmt(d["cpu_s_per_gib"], 2), fmt(b["cpu_s_per_gib"], 2),
            ]
        )
    out.append(table(headers, rows) if rows else "(no runs)")
    out += ["", "### Targets (informative)", ""]
    out.extend(check_line(c) for c in checks)
    if not checks:
        out.append("- (no mode-2 runs)")
    return "\n".join(out)


def checks_lab(summary):
    return [
        check(f"mode 2, {s['label']}: forwarded / direct IOPS", s["iops_ratio"], ">=", 0.6)
        for s in summary
        if s["mode"] == 2
    ]


# ---------------------------------------------------------------------------------------------
# failover.sh
# ---------------------------------------------------------------------------------------------

INTEGRITY = ["stale_reads", "corrupt_reads", "lost_writes"]


def summarize_failover(runs):
    summary = []
    for mode, event in ordered_keys(runs, ["mode", "event"]):
        cell = [r for r in runs if (r.get("mode"), r.get("event")) == (mode, event)]
        ok = [r for r in cell if r.get("ok")]
        stalls = [r.get("longest_stall_ms") for r in ok if r.get("longest_stall_ms") is not None]
        takeovers = [r.get("takeover_ms") for r in ok if r.get("takeover_ms") is not None]
        rejoins = [r.get("rejoin_ms") for r in ok if r.get("rejoin_ms") is not None]
        row = {
            "mode": mode,
            "event": event,
            "n": len(ok),
            "failed": len(cell) - len(ok),
            "stall_median_ms": median(stalls),
            "stall_p90_ms": nearest_rank(stalls, 90),
            "stall_max_ms": max(stalls) if stalls else None,
            "takeover_median_ms": median(takeovers),
            "rejoin_median_ms": median(rejoins),
            # Events after which either controller's log said it fenced (or tried to fence) its
            # peer; None for runs of a script that did not look.
            "fenced": (sum(1 for r in cell if r.get("fenced")) if any("fenced" in r for r in cell) else None),
            "errors": sum(int(r.get("errors") or 0) for r in cell),
            "ops": sum(int(r.get("ops") or 0) for r in cell),
            # Controllers found dead after an event that should not have killed them.
            "unplanned_deaths": sum(len(r.get("unplanned_deaths") or []) for r in cell),
        }
        for k in INTEGRITY:
            row[k] = sum(int(r.get(k) or 0) for r in cell)
        summary.append(row)
    return summary


def render_failover(summary, checks, facts, params):
    out = [
        f"## Duet failover stalls ({facts.get('nproc')} CPUs, kernel {facts.get('kernel')}; "
        f"duetd {facts.get('duetd_git_rev')})",
        "",
        f"duet-mpio (2 paths, QD {params.get('qd')}, 50% writes, every byte verified) runs across one event "
        f"each; the stall is its longest interval without any completion. lease_ms {params.get('lease_ms')}. "
        "Takeover = from the event until the survivor's `duetctl ha` shows it primary; rejoin (stop, pause) = "
        "from the event until the restarted controller is the linked secondary again, under load. Fenced = "
        "events after which a controller's log says it fenced its peer. Unplanned deaths = "
        "controllers found dead after an event that should not have killed them (restarted).",
        "",
    ]
    headers = ["mode", "event", "n", "median stall ms", "p90 ms", "max ms", "takeover median ms",
               "rejoin median ms", "ops", "errors", "stale", "corrupt", "lost writes", "fenced",
               "unplanned deaths"]
    rows = []
    for s in summary:
        rows.append(
            [
                s["mode"], s["event"], f"{s['n']}" + (f" ({s['failed']} failed)" if s["failed"] else ""),
                fmt(s["stall_median_ms"]), fmt(s["stall_p90_ms"]), fmt(s["stall_max_ms"]),
                fmt(s["takeover_median_ms"]), fmt(s.get("rejoin_median_ms")), fmt(s["ops"]), s["errors"],
                s["stale_reads"], s["corrupt_reads"], s["lost_writes"],
                "-" if s.get("fenced") is None else s["fenced"], s["unplanned_deaths"],
            ]
        )
    out.append(table(headers, rows) if rows else "(no runs)")
    out += ["", "### Data integrity, and no fence in a planned hand-over (must be 0)", ""]
    out.extend(check_line(c) for c in checks)
    deaths = sum(s["unplanned_deaths"] for s in summary)
    if deaths:
        out += [
            "",
            f"**{deaths} controller death(s) the script did not cause** (e.g. the old primary fenced by "
            "the new one after a planned switchover); the `note` and `unplanned_deaths` of each run in "
            "the JSON say which, and the controller was started again.",
        ]
    return "\n".join(out)


def checks_failover(summary):
    out = []
    for s in summary:
        bad = sum(s[k] for k in INTEGRITY)
        out.append(check(f"mode {s['mode']}, {s['event']}: stale + corrupt reads + lost writes", bad, "<=", 0))
        # A planned hand-over (switchover, clean stop) fences no one.
        if s["event"] in ("switchover", "stop") and s.get("fenced") is not None:
            out.append(check(f"mode {s['mode']}, {s['event']}: events with a fence", s["fenced"], "<=", 0))
    return out


# ---------------------------------------------------------------------------------------------
# iscsi-perf, duetctl
# ---------------------------------------------------------------------------------------------

PERF_RE = re.compile(r"iops average (\d+) \((\d+) MB/s\)")


def perf(files):
    total_iops = total_mb = 0
    found = 0
    for path in files:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        hits = PERF_RE.findall(text.replace("\r", "\n"))
        if hits:
            iops, mb = hits[-1]
            total_iops += int(iops)
            total_mb += int(mb)
            found += 1
    ok = found == len(files) and found > 0
    return {
        "ok": ok,
        "processes": len(files),
        "parsed": found,
        "iops": total_iops if ok else None,
        "mb_s": total_mb if ok else None,
        "mib_s": total_mb * 1e6 / (1 << 20) if ok else None,
    }


def ha_state(doc, lun):
    if not isinstance(doc, dict):
        return "none - 0"
    link = doc.get("link_state", 0)
    for l in doc.get("luns") or []:
        if l.get("lun") == lun:
            return f"{l.get('role', 'none')} {l.get('local_alua', '-')} {link}"
    return f"none - {link}"


# ---------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("kv")
    p.add_argument("pairs", nargs="*")
    p = sub.add_parser("record")
    p.add_argument("--json", dest="json_file")
    p.add_argument("pairs", nargs="*")
    sub.add_parser("brief")
    p = sub.add_parser("perf")
    p.add_argument("files", nargs="+")
    p = sub.add_parser("ha")
    p.add_argument("lun", type=int)
    p = sub.add_parser("field")
    p.add_argument("key")
    p.add_argument("default", nargs="?", default="")
    for name in ("single", "lab", "failover"):
        p = sub.add_parser(name)
        p.add_argument("raw")
        p.add_argument("facts")
        p.add_argument("params")
        p.add_argument("out")
    a = ap.parse_args()

    if a.cmd == "kv":
        print(json.dumps(pairs(a.pairs)))
    elif a.cmd == "record":
        doc = {}
        if a.json_file:
            doc = load_json_file(a.json_file) or {}
        parsed = bool(doc)
        doc.update(pairs(a.pairs))
        if "ok" not in doc:
            # A client run counts when it exited 0, printed its JSON and reported no errors.
            doc["ok"] = parsed and doc.get("rc", 0) == 0 and not doc.get("errors")
        print(json.dumps(doc))
    elif a.cmd == "brief":
        try:
            r = json.loads(sys.stdin.read() or "null")
        except ValueError:
            r = None
        if not isinstance(r, dict):
            print("no result")
        elif not r.get("ok"):
            print(f"FAILED (rc {r.get('rc')}, errors {r.get('errors')})")
        else:
            parts = [f"{fmt(r.get('iops'))} IOPS", f"{fmt(r.get('mib_s'), 1)} MiB/s"]
            if r.get("lat_p50_us") is not None:
                parts.append(f"p50/p99 {fmt_lat(r.get('lat_p50_us'), r.get('lat_p99_us'))} µs")
            parts.append(f"target CPU {fmt(cpu_per_gib(r), 2)} s/GiB")
            print(", ".join(parts))
    elif a.cmd == "perf":
        print(json.dumps(perf(a.files)))
    elif a.cmd == "ha":
        try:
            doc = json.loads(sys.stdin.read() or "null")
        except ValueError:
            doc = None
        print(ha_state(doc, a.lun))
    elif a.cmd == "field":
        try:
            doc = json.loads(sys.stdin.read() or "null")
        except ValueError:
            doc = None
        v = doc.get(a.key) if isinstance(doc, dict) else None
        print(a.default if v is None else (json.dumps(v) if isinstance(v, (dict, list)) else v))
    else:
        runs = read_jsonl(a.raw)
        facts = load_json_file(a.facts) or {}
        params = load_json_file(a.params) or {}
        summarize, checks_of, render = {
            "single": (summarize_single, checks_single, render_single),
            "lab": (summarize_lab, checks_lab, render_lab),
            "failover": (summarize_failover, checks_failover, render_failover),
        }[a.cmd]
        summary = summarize(runs)
        checks = checks_of(summary)
        failed = sum(1 for r in runs if not r.get("ok"))
        text = render(summary, checks, facts, params)
        if failed:
            text += f"\n\n**{failed} run(s) failed**; see `runs` in {a.out}."
        print(text)
        write_out(
            a.out,
            {
                "kind": a.cmd,
                "machine": facts,
                "params": params,
                "summary": summary,
                "checks": checks,
                "failed_runs": failed,
                "runs": runs,
                "markdown": text,
            },
        )


if __name__ == "__main__":
    main()
