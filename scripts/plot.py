#!/usr/bin/env python3
"""Plots read throughput against read size from the trials that scripts/bench.sh records.

Usage: plot.py TRIALS.tsv OUT.png
       plot.py --from-table BENCHMARKS.md OUT.png

TRIALS.tsv has one row per trial: target, read size, round, bytes, reads, seconds. The plot
shows the median over rounds of each target at each size: MiB/s on the left, reads/s on the
right. A Markdown table of the same medians goes to stdout.

--from-table redraws the plot from that Markdown table as committed in BENCHMARKS.md (the
"| read size | random MiB/s | ..." table), so the PNG always shows the committed figures.
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


def parse_size(label):
    num, unit = label.split()
    return int(num) << {"B": 0, "KiB": 10, "MiB": 20}[unit]


def medians_from_trials(path):
    bps = defaultdict(list)
    rps = defaultdict(list)
    with open(path) as f:
        for line in f:
            cells = line.rstrip("\n").split("\t")
            if len(cells) != 6:
                continue
            target, size, _, nbytes, reads, secs = cells
            key = (target, int(size))
            bps[key].append(int(nbytes) / float(secs))
            rps[key].append(int(reads) / float(secs))
    med_b = {k: statistics.median(v) for k, v in bps.items()}
    med_r = {k: statistics.median(v) for k, v in rps.items()}
    return med_b, med_r


def medians_from_table(path):
    """The read-size table as printed by this script: a header naming "T MiB/s | T reads/s"."""
    med_b, med_r = {}, {}
    header = None
    with open(path) as f:
        for line in f:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells and cells[0] == "read size":
                header = cells
                continue
            if header is None or not line.startswith("|"):
                header = None if not line.startswith("|") else header
                continue
            if set(cells[0]) <= set("-"):
                continue
            size = parse_size(cells[0])
            for name, value in zip(header[1:], cells[1:]):
                if value == "-":
                    continue
                target, unit = name.split()
                number = float(value.replace(",", ""))
                if unit == "MiB/s":
                    med_b[(target, size)] = number * 2**20
                else:
                    med_r[(target, size)] = number
    return med_b, med_r


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--from-table":
        source, png = sys.argv[2], sys.argv[3]
        med_b, med_r = medians_from_table(source)
    elif len(sys.argv) == 3:
        source, png = sys.argv[1], sys.argv[2]
        med_b, med_r = medians_from_trials(source)
    else:
        sys.exit(__doc__)
    if not med_b:
        sys.exit(f"{source}: no figures")
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
        # Log axis: equal distance for an equal factor. The sizes step by 8x and 16x, so a
        # minor tick at every power of two shows that the gaps are 3 and 4 octaves wide.
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sizes)
        ax.set_xticklabels([size_label(s) for s in sizes])
        octaves = range(min(sizes).bit_length() - 1, max(sizes).bit_length())
        ax.set_xticks([1 << k for k in octaves if (1 << k) not in sizes], minor=True)
        ax.set_xticklabels([], minor=True)
        ax.set_xlabel("bytes per read(2), log scale (minor ticks: powers of 2)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax1.legend(loc="upper left", fontsize=9)
    fig.suptitle("Read throughput against read size (median of interleaved rounds)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main()
