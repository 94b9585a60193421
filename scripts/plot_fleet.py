#!/usr/bin/env python3
"""Plots each mount's throughput over time from the fleet benchmark (tests/fleet.rs).

Usage: plot_fleet.py FLEET.tsv OUT.png

FLEET.tsv has one row per mount and second: mount, second, bytes read in that second. The
plot shows each mount's KiB/s over a 5 s moving average, their sum, and the token's ceiling
(30 x 512 KiB / 10 s) with its fair share per mount.
"""
import sys
from collections import defaultdict


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = defaultdict(dict)
    with open(sys.argv[1]) as f:
        next(f)
        for line in f:
            mount, second, nbytes = line.split("\t")
            series[int(mount)][int(second)] = int(nbytes)
    secs = max(max(s) for s in series.values()) + 1
    ceiling = 30 * 512 / 10

    def smooth(values, k=5):
        return [sum(values[max(0, i - k + 1) : i + 1]) / len(values[max(0, i - k + 1) : i + 1]) for i in range(len(values))]

    fig, ax = plt.subplots(figsize=(9, 5))
    total = [0.0] * secs
    for mount in sorted(series):
        kib = [series[mount].get(s, 0) / 1024 for s in range(secs)]
        total = [t + k for t, k in zip(total, kib)]
        ax.plot(range(secs), smooth(kib), label=f"mount {mount + 1}")
    ax.plot(range(secs), smooth(total), "k-", linewidth=2, label="all four")
    ax.axhline(ceiling, color="gray", linestyle="--", label="token ceiling (30 x 512 KiB / 10 s)")
    ax.axhline(ceiling / len(series), color="gray", linestyle=":", label="fair share")
    ax.set_xlabel("seconds")
    ax.set_ylabel("KiB/s read (5 s moving average)")
    ax.set_title("4 mounts sharing one token under a 30 requests / 10 s limit")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=100)


if __name__ == "__main__":
    main()
