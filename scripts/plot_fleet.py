#!/usr/bin/env python3
"""Plots the fleet benchmark's figures against the number of mounts, real runs beside the model.

Usage: plot_fleet.py DIR OUT.png

DIR holds what `scripts/bench.sh fleet` wrote: fleet-N-summary.tsv for each real run
(tests/integration/fleet.rs; a run of the same N again in DIR/again-*/, the figures are then
their mean) and model.tsv (tests/integration/fleet_model.rs). Prints a markdown table (N,
real and model side by side) on stdout and draws four panels: delivered
share of the ceiling, 429 share, busiest/least busy mount, least 20 s share, each with its goal.
"""
import glob
import os
import sys


def read_real(d):
    """Each N's figures, the mean over its runs (a run of N again is in DIR/again-*/), and
    how many runs."""
    runs = {}
    paths = glob.glob(os.path.join(d, "fleet-*-summary.tsv"))
    paths += glob.glob(os.path.join(d, "again-*", "fleet-*-summary.tsv"))
    for path in paths:
        kv = {}
        with open(path) as f:
            for line in f:
                k, _, v = line.rstrip("\n").partition("\t")
                kv[k] = v
        n = int(kv["mounts"])
        runs.setdefault(n, []).append(
            tuple(float(kv["steady_" + k]) for k in ("delivered", "refused", "spread", "worst_20s"))
        )
    return {
        n: (tuple(sum(r[i] for r in rs) / len(rs) for i in range(4)), len(rs))
        for n, rs in runs.items()
    }


def read_model(d):
    rows = {}
    with open(os.path.join(d, "model.tsv")) as f:
        next(f)
        for line in f:
            n, _secs, *figs = line.split("\t")
            rows[int(n)] = tuple(float(x) for x in figs)
    return rows


# Busiest/least above this means a mount got (next to) nothing: shown as such, plotted at it.
SPREAD_CAP = 20.0


def show(fmt, i, v):
    if i == 2 and v > SPREAD_CAP:
        return "a mount starved"
    return fmt.format(v)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    real_runs, model = read_real(sys.argv[1]), read_model(sys.argv[1])
    real = {n: figs for n, (figs, _) in real_runs.items()}
    print("| mounts | delivered real / model | 429s real / model | busiest/least real / model "
          "| worst 20 s share real / model | within 10% | real runs |")
    print("|---|---|---|---|---|---|---|")
    for n in sorted(set(real) | set(model)):
        r, m = real.get(n), model.get(n)
        cells = []
        for i, fmt in enumerate(("{:.3f}", "{:.1%}", "{:.2f}", "{:.2f}")):
            a = show(fmt, i, r[i]) if r else "-"
            b = show(fmt, i, m[i]) if m else "-"
            cells.append(f"{a} / {b}")
        if r and m:
            close = all(
                abs(r[i] - m[i]) <= 0.1 * max(abs(r[i]), 1e-9)
                # A 429 share within one point is within the run's granularity.
                or (i == 1 and abs(r[i] - m[i]) <= 0.01)
                for i in range(3)
            )
            cells.append("yes" if close else "no")
        else:
            cells.append("-")
        cells.append(str(real_runs[n][1]) if n in real_runs else "-")
        print(f"| {n} | " + " | ".join(cells) + " |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    titles = [
        ("delivered / ceiling", 0.90, ">="),
        ("429 answers / requests", 0.05, "<="),
        ("busiest / least busy mount", 1.5, "<="),
        ("least 20 s share / fair share", 0.5, ">="),
    ]
    for i, (ax, (title, goal, how)) in enumerate(zip(axes.flat, titles)):
        for rows, style, label in ((real, "o-", "real mounts"), (model, "s--", "model")):
            ns = sorted(rows)
            ys = [min(rows[n][i], SPREAD_CAP) if i == 2 else rows[n][i] for n in ns]
            ax.plot(ns, ys, style, label=label)
        ax.axhline(goal, color="grey", linestyle=":", label=f"goal {how} {goal}")
        ax.set_xscale("log", base=2)
        ax.set_title(title)
        ax.set_xlabel("mounts sharing one token")
        ax.legend(fontsize=8)
    fig.suptitle("One token (30 requests / 10 s) shared by N mounts, 60 s after a 20 s start")
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=100)


if __name__ == "__main__":
    main()
