#!/usr/bin/env python3
"""Plots each mount's throughput over time from the fleet benchmark (tests/integration/fleet.rs).

Usage: plot_fleet.py FLEET.tsv OUT.png

FLEET.tsv has one row per mount and second: mount, second, bytes read in that second. The top
plot shows each mount's KiB/s averaged over the last 10 s (one rate-limit window), their sum,
and the token's ceiling (30 x 512 KiB / 10 s) with a fair share of it; the bottom one the
MiB each mount has read so far.
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

    def trailing(values, k=10):
        """Mean over the last k seconds (one rate-limit window): the bursts average out."""
        return [sum(values[max(0, i - k + 1) : i + 1]) / min(k, i + 1) for i in range(len(values))]

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 8), sharex=True)
    total = [0.0] * secs
    for mount in sorted(series):
        kib = [series[mount].get(s, 0) / 1024 for s in range(secs)]
        total = [t + k for t, k in zip(total, kib)]
        top.plot(range(secs), trailing(kib), label=f"mount {mount + 1}")
        run = 0.0
        cumulative = []
        for k in kib:
            run += k / 1024
            cumulative.append(run)
        bottom.plot(range(secs), cumulative, label=f"mount {mount + 1}")
    top.plot(range(secs), trailing(total), "k-", linewidth=2, label="all four")
    top.axhline(ceiling, color="gray", linestyle="--", label="token ceiling (30 x 512 KiB / 10 s)")
    top.axhline(ceiling / len(series), color="gray", linestyle=":", label="fair share of it")
    top.set_ylabel("KiB/s read (mean of the last 10 s)")
    top.set_title("4 mounts sharing one token under a 30 requests / 10 s limit")
    top.set_ylim(0, ceiling * 2.2)
    top.legend(loc="upper right", fontsize="small")
    top.annotate("first seconds: each mount's full 4 MiB buffer", xy=(1, ceiling * 2.1),
                 fontsize="small", color="gray")
    bottom.set_xlabel("seconds")
    bottom.set_ylabel("MiB read so far")
    bottom.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=100)


if __name__ == "__main__":
    main()
