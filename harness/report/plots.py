"""Report plots: Pareto fronts and learning curves as inline SVG (matplotlib, no network, no files).

Labels are placed greedily so they do not overlap each other or the points; a dense plot labels its frontier
and the baseline and leaves the rest to the table, so a large study stays legible.
"""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import EngFormatter, FuncFormatter  # noqa: E402

from harness.report.tables import is_plain_baseline  # noqa: E402

plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "golf-harness", "font.size": 9,
                     "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False})

MAX_LABELS = 40
BASELINE_COLOR = "#222222"
FRONT_COLOR = "#d62728"
POINT_COLOR = "#1f77b4"


def plain(text: str) -> str:
    """A user string as literal text: matplotlib would read `$...$` as mathematics."""
    return str(text).replace("\\", "\\\\").replace("$", r"\$")


def to_svg(fig) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def pareto_front(points: list[tuple[float, float]], maximize_x: bool = False) -> list[int]:
    """Indices of the points no other point beats on both axes (lower y; lower x, or higher x if maximize_x)."""
    order = sorted(range(len(points)), key=lambda i: ((-points[i][0] if maximize_x else points[i][0]), points[i][1]))
    front, best = [], math.inf
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def place_labels(ax, xs: list[float], ys: list[float], labels: dict[int, str]) -> int:
    """Put each label at the first of eight offsets around its point that overlaps no label or point so far;
    a label with no free spot is left out (the table has every row). Returns how many were left out."""
    renderer = ax.figure.canvas.get_renderer()
    to_pixels = ax.transData.transform
    point_boxes = [(px - 3, py - 3, px + 3, py + 3) for px, py in (to_pixels((x, y)) for x, y in zip(xs, ys))]
    placed: list[tuple[float, float, float, float]] = []
    offsets = [(6, 6), (6, -12), (-6, 6), (-6, -12), (10, -3), (-10, -3), (0, 12), (0, -16)]
    left_out = 0
    for i, text in labels.items():
        for dx, dy in offsets:
            annotation = ax.annotate(plain(text), (xs[i], ys[i]), xytext=(dx, dy), textcoords="offset points",
                                     fontsize=7, ha="left" if dx >= 0 else "right", va="bottom")
            box = annotation.get_window_extent(renderer)
            rect = (box.x0, box.y0, box.x1, box.y1)
            if not any(overlaps(rect, other) for other in placed + point_boxes):
                placed.append(rect)
                break
            annotation.remove()
        else:
            left_out += 1
    return left_out


def overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def pareto_plot(rows: list[dict], x_key: str, x_label: str, *, maximize_x: bool = False, log_x: bool = False,
                cap: float | None = None, title: str = "") -> str | None:
    """val_bpb (mean ± std over seeds) against one cost; the frontier drawn; frontier and baseline labelled."""
    rows = [r for r in rows if r.get(x_key) is not None and r.get("bpb_mean") is not None]
    if not rows:
        return None
    xs = [float(r[x_key]) for r in rows]
    ys = [float(r["bpb_mean"]) for r in rows]
    errors = [float(r["bpb_std"] or 0.0) for r in rows]
    fig, ax = plt.subplots(figsize=(4.7, 3.5))
    ax.errorbar(xs, ys, yerr=errors, fmt="o", ms=4, color=POINT_COLOR, ecolor="#9ecae1", elinewidth=1,
                capsize=2, zorder=2, label="configuration (mean ± std over seeds)")
    front = pareto_front(list(zip(xs, ys)), maximize_x)
    fx, fy = [xs[i] for i in front], [ys[i] for i in front]
    ax.step(fx, fy, where="post", color=FRONT_COLOR, lw=1.2, zorder=1, label="Pareto front")
    ax.scatter(fx, fy, s=28, facecolors="none", edgecolors=FRONT_COLOR, zorder=3)
    baseline = [i for i, r in enumerate(rows) if is_plain_baseline(r)]
    ax.scatter([xs[i] for i in baseline], [ys[i] for i in baseline], marker="s", s=30, color=BASELINE_COLOR,
               zorder=4, label="baseline")
    if cap is not None:
        ax.axvline(cap, color="#ff7f0e", ls="--", lw=1, label=f"artifact cap {cap:,.0f} bytes")
    if log_x:
        ax.set_xscale("log")
    else:
        ax.xaxis.set_major_formatter(EngFormatter())
    ax.set_xlabel(x_label)
    ax.set_ylabel("val_bpb after int8+zlib round trip")
    ax.set_title(plain(title), fontsize=9)
    # Below the axes, never over the points (and matplotlib's "best" placement is slow on large plots).
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    wanted = list(dict.fromkeys(baseline + front + (list(range(len(rows))) if len(rows) <= 12 else [])))
    place_labels(ax, xs, ys, {i: rows[i]["label"] for i in wanted[:MAX_LABELS]})
    return to_svg(fig)


def learning_curves(series: list[dict], title: str = "") -> str | None:
    """val_bpb and train loss against training seconds and tokens; the baseline drawn thick and dark.

    Each series: {"label", "baseline": bool, "curve": [{seconds, tokens, train_loss, val_bpb?}], "final": {...}}.
    """
    if not series:
        return None
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.4), sharey="row")
    colors = plt.get_cmap("tab10")
    for n, s in enumerate(series):
        style = ({"color": BASELINE_COLOR, "lw": 2.2, "zorder": 5} if s["baseline"]
                 else {"color": colors(n % 10), "lw": 1.2})
        train = [c for c in s["curve"] if c.get("train_loss") is not None]
        val = [c for c in s["curve"] if c.get("val_bpb") is not None] + ([s["final"]] if s.get("final") else [])
        for col, x_key in enumerate(("seconds", "tokens")):
            axes[0, col].plot([c[x_key] for c in val], [c["val_bpb"] for c in val], marker="o", ms=3,
                              label=plain(s["label"]), **style)
            axes[1, col].plot([c[x_key] for c in train], smooth([c["train_loss"] for c in train]),
                              label=plain(s["label"]), **style)
    for col, x_label in enumerate(("training seconds (the budget's clock)", "training tokens")):
        axes[1, col].set_xlabel(x_label)
    for ax in axes[:, 1]:
        ax.xaxis.set_major_formatter(EngFormatter())
    axes[0, 0].set_ylabel("val_bpb (during training; last point: final eval)")
    axes[1, 0].set_ylabel("train loss (nats, smoothed)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=7)
    fig.suptitle(plain(title), fontsize=9)
    return to_svg(fig)


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average with bias correction, as training dashboards draw noisy losses."""
    out, avg = [], 0.0
    for n, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** n))
    return out


def parameter_plot(rows: list[dict], parameter: str, title: str = "", log_x: bool = False,
                   join: bool = True) -> str | None:
    """A swept parameter against val_bpb: one point per run and, with `join` (a grid, a study's choices),
    the mean per value joined by a line; a study's sampled ranges are left as points."""
    points = [(r[parameter], r["val_bpb_post_quant"]) for r in rows
              if r.get(parameter) is not None and r.get("val_bpb_post_quant") is not None]
    if not points:
        return None
    numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x, _ in points)
    keys = sorted({x for x, _ in points}) if numeric else sorted({str(x) for x, _ in points})
    position = {k: (k if numeric else i) for i, k in enumerate(keys)}
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    ax.scatter([position[x if numeric else str(x)] for x, _ in points], [y for _, y in points], s=14,
               color=POINT_COLOR, alpha=0.7)
    means = [sum(y for x, y in points if (x if numeric else str(x)) == k) /
             sum(1 for x, _ in points if (x if numeric else str(x)) == k) for k in keys]
    if join:
        ax.plot([position[k] for k in keys], means, color=FRONT_COLOR, lw=1.2)
    if numeric and log_x and min(keys) > 0:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 0.01, not 10^-2
        ax.xaxis.set_minor_formatter(FuncFormatter(  # and 0.02, 0.05 between, without crowding
            lambda v, _: f"{v:g}" if round(v / 10 ** math.floor(math.log10(v))) in (2, 5) else ""))
    if not numeric:
        ax.set_xticks(range(len(keys)), [plain(k) for k in keys], rotation=30, ha="right")
    ax.set_xlabel(plain(parameter))
    ax.set_ylabel("val_bpb (post-quant)")
    ax.set_title(plain(title), fontsize=9)
    return to_svg(fig)


def history_plot(rows: list[dict], title: str = "") -> str | None:
    """A tuning study's trials in order: each trial's val_bpb, the best so far, and pruned trials at the
    (pre-quant) val_bpb they were stopped with."""
    points = [(r["trial"], r["val_bpb_post_quant"]) for r in rows
              if r.get("trial") is not None and r.get("val_bpb_post_quant") is not None]
    pruned = [(r["trial"], r["pruned_bpb"]) for r in rows if r.get("trial") is not None and r.get("pruned_bpb")]
    if not points and not pruned:
        return None
    points.sort()
    best, running = [], math.inf
    for _, y in points:
        running = min(running, y)
        best.append(running)
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    ax.scatter([x for x, _ in points], [y for _, y in points], s=14, color=POINT_COLOR, label="trial")
    if pruned:
        ax.scatter([x for x, _ in pruned], [y for _, y in pruned], s=18, marker="x", color="#999999",
                   label="pruned (val_bpb when stopped)")
    if points:
        ax.step([x for x, _ in points], best, where="post", color=FRONT_COLOR, label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("val_bpb (post-quant)")
    ax.set_title(plain(title), fontsize=9)
    ax.legend(fontsize=7)
    return to_svg(fig)


def importance_plot(importances: dict[str, float], title: str = "") -> str | None:
    """Parameter importances (fANOVA, summing to 1) as horizontal bars, the largest on top."""
    if not importances:
        return None
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(4.8, 0.6 + 0.32 * len(names)))
    ax.barh([plain(n) for n in names], [importances[n] for n in names], color=POINT_COLOR)
    ax.set_xlabel("importance for val_bpb (fANOVA)")
    ax.set_xlim(0, 1)
    ax.set_title(plain(title), fontsize=9)
    return to_svg(fig)
