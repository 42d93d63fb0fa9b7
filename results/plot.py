"""Metric vs counted NFE (or MACs per sample), one line per solver, published points hollow in the same colour."""
from __future__ import annotations

import io


def plot_bytes(tables, metrics: list[str], image_type: str, x: str = "nfe") -> bytes:
    """One panel per (table, metric) in one figure; returns the PNG or SVG file's bytes.

    x: "nfe" (counted model evaluations) or "macs" (multiply-accumulates per sample); published points
    carry no MACs, so they are drawn on the NFE axis only."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on a cluster node or in CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    from .collect import DISPLAY, stats
    from .settings import label

    panels = [(t, m) for t in tables for m in metrics if m in t.metrics]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 4 * len(panels)), squeeze=False, layout="constrained")
    try:
        for ax, (t, m) in zip(axes[:, 0], panels):
            colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
            positive = True
            for i, (lbl, row) in enumerate(t.rows.items()):
                colour = colours[i % len(colours)]
                cost = (lambda c: max(c.counted)) if x == "nfe" else (lambda c: c.macs_per_sample)  # noqa: E731
                pts = sorted((cost(c), *stats(c.values(m))) for c in row.cells.values() if c.values(m))
                if not pts:
                    continue
                xs, ys, sd = zip(*pts)
                positive &= min(ys) > 0
                ax.errorbar(xs, ys, yerr=[s or 0.0 for s in sd], color=colour, marker="o", ms=4, lw=1.5,
                            capsize=2, label=lbl)
                theirs = sorted(row.points.get(m, ())) if x == "nfe" else []
                if theirs:
                    px, py = zip(*theirs)
                    ax.plot(px, py, linestyle="none", marker="o", ms=7, mfc="none", mec=colour, mew=1.5,
                            label=f"{lbl}, published")
            ax.set_xscale("log")
            if positive:
                ax.set_yscale("log")
            _ticks(ax, FormatStrFormatter, NullFormatter, x)
            ax.set_xlabel("NFE (counted model evaluations)" if x == "nfe" else "MACs per sample (multiply-accumulates)")
            ax.set_ylabel(DISPLAY.get(m, m))
            ax.set_title(f"{label(t.model, t.model_diff)}: {DISPLAY.get(m, m)}\n{_short(t)}", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False)  # outside the data
        buf = io.BytesIO()
        fig.savefig(buf, format=image_type, bbox_inches="tight", dpi=150)
        return buf.getvalue()
    finally:
        plt.close(fig)


def _short(t) -> str:
    from .collect import protocol_text

    text = protocol_text(t.protocol)
    return text if len(text) < 110 else text[:107] + "..."


def _ticks(ax, FormatStrFormatter, NullFormatter, x: str = "nfe") -> None:
    """Plain numbers on the log axes (4, 10, 20, not 10^1); the x ticks are the NFEs drawn, where they fit."""
    lo, hi = ax.get_ylim()
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    narrow = ax.get_yscale() == "log" and hi / lo < 30  # under ~1.5 decades: label the minor ticks too
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%g") if narrow else NullFormatter())
    if x == "macs":  # matplotlib's own log ticks (10^7, ...): MACs are not round numbers
        return
    xs = sorted({float(v) for line in ax.get_lines() for v in line.get_xdata()})
    kept = [v for i, v in enumerate(xs) if i == 0 or v / xs[i - 1] > 1.15]
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    if 0 < len(kept) <= 12:
        ax.set_xticks(kept)
