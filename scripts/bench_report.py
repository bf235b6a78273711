"""Turns scripts/bench results (JSON lines) into a Markdown section of docs/BENCHMARKS.md.

Medians over rounds; ratios are AmberDB / PostgreSQL 15 measured in the same run,
interleaved pair by pair.
"""
import json
import platform
import re
import statistics
import subprocess
import sys
from datetime import datetime, timezone


def med(rows, key):
    vals = [r[key] for r in rows if key in r]
    return statistics.median(vals) if vals else float("nan")


def core(rows):
    out = []
    by = lambda b, **kw: [r for r in rows if r["bench"] == b and all(r.get(k) == v for k, v in kw.items())]
    one = med(by("commits", writers=1), "commits_per_sec")
    out.append("| measurement | AmberDB (median) | PostgreSQL 15 (median) | AmberDB / PG | AmberDB p50 / p99 latency | AmberDB peak RSS |")
    out.append("|---|---|---|---|---|---|")
    for w in (1, 16, 64):
        a = by("commits", writers=w)
        p = by("pg_commits", writers=w)
        am, pm = med(a, "commits_per_sec"), med(p, "commits_per_sec")
        out.append(
            f"| commits/s, {w} writer{'s' if w > 1 else ''} | {am:,.0f} | {pm:,.0f} | {am / pm if pm else float('nan'):.2f}× "
            f"| {med(a, 'p50_ms'):.2f} / {med(a, 'p99_ms'):.2f} ms | {max(r['peak_rss_kb'] for r in a) / 1024:.0f} MiB |"
        )
    a, p = by("reads"), by("pg_reads")
    am, pm = med(a, "reads_per_sec"), med(p, "reads_per_sec")
    out.append(f"| point reads/s, 2 readers | {am:,.0f} | {pm:,.0f} | {am / pm if pm else float('nan'):.2f}× | – | {max(r['peak_rss_kb'] for r in a) / 1024:.0f} MiB |")
    a, p = by("scan"), by("pg_scan")
    am = med(a, "mb_per_sec")
    pm = statistics.median([r["bytes"] / 1e6 / r["seconds"] for r in p]) if p else float("nan")
    out.append(f"| full scan MB/s (200k rows × ~116 B) | {am:,.0f} | {pm:,.0f} | {am / pm if pm else float('nan'):.2f}× | – | {max(r['peak_rss_kb'] for r in a) / 1024:.0f} MiB |")
    sixty_four = med(by("commits", writers=64), "commits_per_sec")
    per_entry = {
        w: statistics.median([r["commits"] / r["log_entries"] for r in by("commits", writers=w) if r.get("log_entries")] or [float("nan")])
        for w in (1, 16, 64)
    }
    out.append("")
    out.append(f"Group commit: commits/s at 64 writers ÷ at 1 writer = **{sixty_four / one:.1f}×** (target ≥ 20×). "
               f"Transactions per commit-log entry (one fsync each): {per_entry[1]:.1f} at 1 writer, "
               f"{per_entry[16]:.1f} at 16, {per_entry[64]:.1f} at 64. "
               f"1-writer latency (p50 {med(by('commits', writers=1), 'p50_ms'):.2f} ms) is the fsync time of the moment.")
    return out


def pgbench(rows):
    a = [r for r in rows if r["bench"] == "amber_pgbench"]
    p = [r for r in rows if r["bench"] == "pg_pgbench"]
    rss = [r["peak_rss_kb"] for r in rows if r["bench"] == "amber_rss"]
    at, pt = med(a, "tps"), med(p, "tps")
    a99, p99 = med(a, "p99_ms"), med(p, "p99_ms")
    return [
        "| measurement | AmberDB (median) | PostgreSQL 15 (median) | AmberDB / PG |",
        "|---|---|---|---|",
        f"| tps (4 clients, TPC-B-like, -M prepared) | {at:,.0f} | {pt:,.0f} | {at / pt if pt else float('nan'):.2f}× |",
        f"| p50 latency | {med(a, 'p50_ms'):.2f} ms | {med(p, 'p50_ms'):.2f} ms | {med(a, 'p50_ms') / med(p, 'p50_ms'):.2f}× |",
        f"| p99 latency | {a99:.2f} ms | {p99:.2f} ms | {a99 / p99 if p99 else float('nan'):.2f}× |",
        f"| failed transactions (after retries) | {sum(r['failed'] for r in a)} | {sum(r['failed'] for r in p)} | |",
        "",
        f"AmberDB server peak RSS: {max(rss) / 1024 if rss else float('nan'):.0f} MiB.",
    ]


def backup(rows):
    load = [r for r in rows if r["bench"] == "load"][0]
    mb = load["csv_bytes"] / 1e6
    by = lambda b: [r for r in rows if r["bench"] == b]
    t = lambda b: med(by(b), "seconds")
    size = lambda b: med(by(b), "bytes")
    rss = lambda b: max((r["peak_rss_kb"] for r in by(b)), default=0) / 1024
    out = [
        f"{load['rows']:,} rows (`id bigint primary key, name text, balance bigint, ts timestamp`), "
        f"{mb:,.0f} MB as CSV (the logical size used for MB/s). Loading them into AmberDB with COPY took "
        f"{load['amber_copy_seconds']:.0f} s.",
        "",
        "| operation | time (median) | MB/s of logical data | size | vs PostgreSQL | AmberDB peak RSS |",
        "|---|---|---|---|---|---|",
        f"| AmberDB `BACKUP DATABASE` (zstd level 1) | {t('amber_backup'):.1f} s | {mb / t('amber_backup'):,.0f} | {size('amber_backup') / 1e6:,.0f} MB | "
        f"{t('amber_backup') / t('pg_dump'):.2f}× pg_dump time | {rss('amber_backup'):,.0f} MiB |",
        f"| `pg_dump -Fc` | {t('pg_dump'):.1f} s | {mb / t('pg_dump'):,.0f} | {size('pg_dump') / 1e6:,.0f} MB | | |",
        f"| `pg_basebackup -Ft --compress=client-zstd` | {t('pg_basebackup'):.1f} s | {mb / t('pg_basebackup'):,.0f} | {size('pg_basebackup') / 1e6:,.0f} MB | | |",
        f"| AmberDB `RESTORE DATABASE` (fresh server) | {t('amber_restore'):.1f} s | {mb / t('amber_restore'):,.0f} | | "
        f"{t('amber_restore') / t('pg_restore'):.2f}× pg_restore time | {rss('amber_restore'):,.0f} MiB |",
        f"| `pg_restore -j2` | {t('pg_restore'):.1f} s | {mb / t('pg_restore'):,.0f} | | | |",
    ]
    return out


def pitr(rows):
    by = lambda b: [r for r in rows if r["bench"] == b]
    plain, cont = med(by("pgbench_plain"), "tps"), med(by("pgbench_continuous"), "tps")
    rpo = by("rpo")
    inc = by("incremental")[0]
    mb = inc["csv_bytes"] / 1e6
    a, p = med(by("amber_pitr_restore"), "seconds"), med(by("pg_restore"), "seconds")
    rss = max((r["peak_rss_kb"] for r in by("amber_pitr_restore")), default=0) / 1024
    srv = max((r["peak_rss_kb"] for r in by("amber_rss")), default=0) / 1024
    return [
        "| measurement | result | target |",
        "|---|---|---|",
        f"| pgbench tps (4 clients, TPC-B-like), no backup running | {plain:,.0f} | |",
        f"| pgbench tps with a continuous backup running (flush 1 s) | {cont:,.0f} (**{cont / plain:.2f}×**) | ≥ 0.9× |",
        f"| live RPO (lag of the newest restorable commit), p50 / p99 / max over {sum(r['samples'] for r in rpo)} samples | "
        f"{statistics.median(r['p50_s'] for r in rpo):.2f} s / {statistics.median(r['p99_s'] for r in rpo):.2f} s / {max(r['max_s'] for r in rpo):.2f} s | |",
        f"| incremental backup after changing 1 % of {inc['rows']:,} rows vs the full backup | {inc['incremental_bytes'] / 1e6:,.2f} MB vs "
        f"{inc['full_bytes'] / 1e6:,.1f} MB (**{100 * inc['incremental_bytes'] / inc['full_bytes']:.1f} %**) | ≤ 3 % |",
        f"| point-in-time RESTORE DATABASE (snapshot + log replay), fresh server | {a:.1f} s, {mb / a:,.0f} MB/s, peak RSS {rss:,.0f} MiB | |",
        f"| `pg_restore -j2` of the same rows | {p:.1f} s, {mb / p:,.0f} MB/s (AmberDB / PG time: **{a / p:.2f}×**) | |",
        "",
        f"AmberDB server peak RSS during the pgbench runs: {srv:,.0f} MiB. MB/s are of the rows' CSV size ({mb:,.0f} MB).",
    ]


def copy(rows):
    by = lambda b: [r for r in rows if r["bench"] == b]
    a, p = by("amber_copy"), by("pg_copy")
    first = a[0]
    mb = first["csv_bytes"] / 1e6
    at, pt = med(a, "seconds"), med(p, "seconds")
    rss = max(r["peak_rss_kb"] for r in a) / 1024
    base = max(r["rss_before_kb"] for r in a) / 1024
    return [
        f"One `\\copy … FROM` of {first['rows']:,} rows (`aid int primary key, bid int, abalance int, "
        f"filler char(84)`, {mb:,.0f} MB as CSV) in ONE transaction, into an empty table.",
        "",
        "| measurement | AmberDB (median) | PostgreSQL 15 (median) | AmberDB / PG |",
        "|---|---|---|---|",
        f"| COPY time | {at:.1f} s ({mb / at:,.1f} MB/s) | {pt:.1f} s ({mb / pt:,.1f} MB/s) | **{at / pt:.2f}×** |",
        f"| AmberDB server peak RSS during the COPY (fresh server; {base:,.0f} MiB before it) | {rss:,.0f} MiB | | |",
    ]


def init(rows):
    by = lambda b: [r for r in rows if r["bench"] == b]
    a, p = by("amber_init"), by("pg_init")
    scale = a[0]["scale"]
    rss = max(r["peak_rss_kb"] for r in a) / 1024
    base = max(r["rss_before_kb"] for r in a) / 1024
    lines = [
        f"`pgbench -i -s {scale}` ({scale * 100000:,} accounts): create the tables, load them "
        "client-side with `COPY … FREEZE` (one transaction per table), VACUUM, then "
        "`ALTER TABLE … ADD PRIMARY KEY` on each (a rebuild of the table here, an index "
        "build in PostgreSQL). Steps as pgbench reports them.",
        "",
        "| step | AmberDB (median) | PostgreSQL 15 (median) | AmberDB / PG |",
        "|---|---|---|---|",
    ]
    for key, label in [("seconds", "whole `pgbench -i`"), ("client_side_generate", "generate (COPY)"),
                       ("vacuum", "vacuum"), ("primary_keys", "primary keys")]:
        at, pt = med(a, key), med(p, key)
        ratio = f"**{at / pt:.1f}×**" if pt > 0 else "—"
        lines.append(f"| {label} | {at:.2f} s | {pt:.2f} s | {ratio} |")
    lines.append(f"| AmberDB server peak RSS (fresh server; {base:,.0f} MiB before) | {rss:,.0f} MiB | | |")
    return lines


def main():
    what, results, doc, command = sys.argv[1:5]
    rows = [json.loads(l) for l in open(results) if l.strip()]
    body = {"core": core, "pgbench": pgbench, "backup": backup, "pitr": pitr, "copy": copy, "init": init}[what](rows)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = [
        f"<!-- bench:{what}:start -->",
        f"Command: `{command}` — run {stamp} at commit `{rev}` on {platform.machine()}, "
        f"{subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores.",
        "",
        *body,
        "",
        "Raw rows (one JSON object per run, in the order they ran):",
        "",
        "```",
        *[json.dumps(r) for r in rows],
        "```",
        f"<!-- bench:{what}:end -->",
    ]
    text = open(doc).read()
    pattern = re.compile(rf"<!-- bench:{what}:start -->.*?<!-- bench:{what}:end -->", re.S)
    new = "\n".join(section)
    text = pattern.sub(lambda _: new, text) if pattern.search(text) else text + "\n" + new + "\n"
    open(doc, "w").write(text)
    print("\n".join(body))


if __name__ == "__main__":
    main()
