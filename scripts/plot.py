#!/usr/bin/env python3
"""Plots read throughput against read size from the trials that scripts/bench.sh records.

Usage: plot.py TRIALS.tsv OUT.png

TRIALS.tsv has one row per trial: target, read size, round, bytes, reads, seconds. The plot
shows the median over rounds of each target at each size: MiB/s on the left, reads/s on the
right. A Markdown table of the same medians goes to stdout.
"""
import statistics
import sys
from collections import defaultdict

LABELS = {
    "random": "qrypt-fs /random (1 GiB buffer, full)",
    "null": "null FUSE fs (static buffer)",
    "urandom": "/dev/urandom",
}
STYLE = {"random": "o-", "null": "s--", "urandom": "^:"}


def size_label(n):
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    if n >= 1 << 10 and n % (1 << 10) == 0:
        return f"{n >> 10} KiB"
    return f"{n} B"


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    trials, png = sys.argv[1], sys.argv[2]
    bps = defaultdict(list)
    rps = defaultdict(list)
    with open(trials) as f:
        for line in f:
            cells = line.rstrip("\n").split("\t")
            if len(cells) != 6:
                continue
            target, size, _, nbytes, reads, secs = cells
            key = (target, int(size))
            bps[key].append(int(nbytes) / float(secs))
            rps[key].append(int(reads) / float(secs))
    if not bps:
        sys.exit(f"{trials}: no trials")
    med_b = {k: statistics.median(v) for k, v in bps.items()}
    med_r = {k: statistics.median(v) for k, v in rps.items()}
    targets = [t for t in LABELS if any(k[0] == t for k in med_b)]
    targets += sorted({k[0] for k in med_b} - set(targets))
    sizes = sorted({k[1] for k in med_b})

    print("| read size | " + " | ".join(f"{t} MiB/s | {t} reads/s" for t in targets) + " |")
    print("|---" * (1 + 2 * len(targets)) + "|")
    for s in sizes:
        cells = []
        for t in targets:
            b, r = med_b.get((t, s)), med_r.get((t, s))
            cells += [f"{b / 2**20:.1f}" if b else "-", f"{r:,.0f}" if r else "-"]
        print(f"| {size_label(s)} | " + " | ".join(cells) + " |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    for t in targets:
        xs = [s for s in sizes if (t, s) in med_b]
        style = STYLE.get(t, ".-")
        ax1.plot(xs, [med_b[(t, s)] / 2**20 for s in xs], style, label=LABELS.get(t, t))
        ax2.plot(xs, [med_r[(t, s)] for s in xs], style, label=LABELS.get(t, t))
    for ax, ylabel in ((ax1, "throughput (MiB/s)"), (ax2, "reads per second")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sizes)
        ax.set_xticklabels([size_label(s) for s in sizes])
        ax.set_xlabel("bytes per read(2)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax1.legend(loc="upper left", fontsize=9)
    fig.suptitle("Read throughput against read size (median of interleaved rounds)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main()
