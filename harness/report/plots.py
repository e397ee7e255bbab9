"""Report plots: Pareto fronts and learning curves as inline SVG (matplotlib, no network, no files).

Labels are placed greedily so they do not overlap each other or the points; a dense plot labels its frontier
and the baseline and leaves the rest to the table, so a large study stays legible. Every drawn series has a
legend entry, and each SVG lists the series it draws in `data-series` (JSON), so a test can hold the legend to it.
"""

from __future__ import annotations

import html
import io
import json
import math
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import (  # noqa: E402
    EngFormatter,
    FuncFormatter,
    LogLocator,
    MaxNLocator,
    NullFormatter,
)

from harness.report.tables import is_plain_baseline  # noqa: E402

plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "golf-harness", "font.size": 9,
                     "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False})

MAX_LABELS = 40
LABEL_WIDTH = 34  # characters per line of a configuration label in a legend or beside a point
BASELINE_COLOR = "#222222"
FRONT_COLOR = "#d62728"
POINT_COLOR = "#1f77b4"
DECORATION = "_decoration"  # the label of an artist that repeats a series already in the legend


def plain(text: str) -> str:
    """A user string as literal text: matplotlib would read `$...$` as mathematics."""
    return str(text).replace("\\", "\\\\").replace("$", r"\$")


def wrapped(text: str, width: int = LABEL_WIDTH) -> str:
    """A long configuration label on a few lines, broken only at spaces (the words are the label's own)."""
    return "\n".join(textwrap.wrap(plain(text), width, break_long_words=False, break_on_hyphens=False)) or plain(text)


def drawn_series(fig) -> list[str]:
    """The labels of every series drawn with data in the figure's axes (containers such as error bars count
    once); an unlabelled artist shows up under matplotlib's `_child` name, which no legend carries."""
    labels = []
    for ax in fig.axes:
        inside = set()
        for container in ax.containers:
            members = [a for a in container.get_children() if a is not None]
            inside.update(id(a) for a in members)
            if members and container.get_label() != DECORATION:
                labels.append(container.get_label())
        for artist in [*ax.lines, *ax.collections, *ax.patches]:
            if id(artist) in inside or artist.get_label() == DECORATION or not has_data(artist):
                continue
            labels.append(artist.get_label())
    return list(dict.fromkeys(labels))


def has_data(artist) -> bool:
    if hasattr(artist, "get_xdata"):
        return len(artist.get_xdata()) > 0
    if hasattr(artist, "get_offsets"):
        return len(artist.get_offsets()) > 0
    return True


def to_svg(fig) -> str:
    series = [label.replace("\\$", "$").replace("\\\\", "\\").replace("\n", " ") for label in drawn_series(fig)]
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    return f'<svg data-series="{html.escape(json.dumps(series), quote=True)}"' + text[len("<svg"):]


def scale_axis(ax, which: str, values: list[float], log: bool, formatter=None) -> None:
    """A log axis where the values span at least a decade, ticked at 1, 2, 5 × 10^k (only 10^k past three
    decades) so there are always two or more labels and never a crowd; a linear one (at most five ticks) when
    the span is smaller, where a log scale would show one label or none. Integers never get halves."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    formatter = formatter or EngFormatter()
    positive = [v for v in values if v > 0]
    decades = math.log10(max(positive) / min(positive)) if log and positive and len(positive) == len(values) else 0
    if log and decades >= 1:
        (ax.set_xscale if which == "x" else ax.set_yscale)("log")
        axis.set_major_locator(LogLocator(base=10, subs=(1.0,) if decades > 3 else (1.0, 2.0, 5.0), numticks=12))
        axis.set_minor_locator(LogLocator(base=10, subs=tuple(range(2, 10)), numticks=12))
        axis.set_minor_formatter(NullFormatter())
    else:
        integers = all(float(v).is_integer() for v in values)
        axis.set_major_locator(MaxNLocator(nbins=5, integer=integers, min_n_ticks=2))
    axis.set_major_formatter(formatter)


def integer_axis(ax, which: str = "x") -> None:
    """Steps, seeds, trial numbers, layer counts: ticks at whole numbers only."""
    (ax.xaxis if which == "x" else ax.yaxis).set_major_locator(MaxNLocator(integer=True, min_n_ticks=2))


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
    frame = ax.get_window_extent(renderer)  # a label stays inside the axes, clear of the title and the legend
    offsets = [(6, 6), (6, -12), (-6, 6), (-6, -12), (10, -3), (-10, -3), (0, 12), (0, -16)]
    left_out = 0
    for i, text in labels.items():
        for dx, dy in offsets:
            annotation = ax.annotate(wrapped(text, 28), (xs[i], ys[i]), xytext=(dx, dy), textcoords="offset points",
                                     fontsize=7, ha="left" if dx >= 0 else "right", va="bottom")
            box = annotation.get_window_extent(renderer)
            rect = (box.x0, box.y0, box.x1, box.y1)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(overlaps(rect, other) for other in placed + point_boxes):
                placed.append(rect)
                break
            annotation.remove()
        else:
            left_out += 1
    return left_out


def overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def pareto_plot(rows: list[dict], x_key: str, x_label: str, *, maximize_x: bool = False, log_x: bool = False,
                cap: float | None = None, title: str = "",
                point_label: str = "configuration (mean ± std over runs)") -> str | None:
    """val_bpb (mean ± std over runs) against one cost; the frontier drawn; frontier and baseline labelled."""
    rows = [r for r in rows if r.get(x_key) is not None and r.get("bpb_mean") is not None]
    if not rows:
        return None
    xs = [float(r[x_key]) for r in rows]
    ys = [float(r["bpb_mean"]) for r in rows]
    errors = [float(r["bpb_std"] or 0.0) for r in rows]
    fig, ax = plt.subplots(figsize=(4.7, 3.5))
    ax.errorbar(xs, ys, yerr=errors, fmt="o", ms=4, color=POINT_COLOR, ecolor="#9ecae1", elinewidth=1,
                capsize=2, zorder=2, label=point_label)
    front = pareto_front(list(zip(xs, ys)), maximize_x)
    fx, fy = [xs[i] for i in front], [ys[i] for i in front]
    # Markers on the step line sit on the front's points (the line's corners are not points).
    ax.step(fx, fy, where="post", color=FRONT_COLOR, lw=1.2, zorder=3, marker="o", ms=6, mfc="none",
            label="Pareto front")
    baseline = [i for i, r in enumerate(rows) if is_plain_baseline(r)]
    if baseline:  # a legend entry only for what is drawn
        ax.scatter([xs[i] for i in baseline], [ys[i] for i in baseline], marker="s", s=30, color=BASELINE_COLOR,
                   zorder=4, label="baseline")
    if cap is not None:
        ax.axvline(cap, color="#ff7f0e", ls="--", lw=1, label=f"artifact cap {cap:,.0f} bytes")
    scale_axis(ax, "x", xs + ([float(cap)] if cap is not None else []), log_x)
    ax.set_xlabel(x_label)
    ax.set_ylabel("val_bpb after int8+zlib round trip")
    ax.set_title(plain(title), fontsize=9)
    # Below the axes, never over the points (and matplotlib's "best" placement is slow on large plots).
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    wanted = list(dict.fromkeys(baseline + front + (list(range(len(rows))) if len(rows) <= 12 else [])))
    place_labels(ax, xs, ys, {i: rows[i]["label"] for i in wanted[:MAX_LABELS]})
    return to_svg(fig)


def learning_curves(series: list[dict], title: str = "") -> str | None:
    """val_bpb and train loss against training seconds and tokens; the baseline drawn thick and dark; the
    legend in a panel of its own at the right, inside the figure.

    Each series: {"label", "baseline": bool, "curve": [{seconds, tokens, train_loss, val_bpb?}], "final": {...}}.
    """
    if not series:
        return None
    fig = plt.figure(figsize=(11, 6.4))
    grid = fig.add_gridspec(2, 3, width_ratios=(1, 1, 0.62), wspace=0.25, hspace=0.3)
    axes = [[fig.add_subplot(grid[row, col]) for col in range(2)] for row in range(2)]
    for row in axes:
        row[1].sharey(row[0])
    colors = plt.get_cmap("tab10")
    handles: dict[str, object] = {}
    for n, s in enumerate(series):
        style = ({"color": BASELINE_COLOR, "lw": 2.2, "zorder": 5} if s["baseline"]
                 else {"color": colors(n % 10), "lw": 1.2})
        train = [c for c in s["curve"] if c.get("train_loss") is not None]
        val = [c for c in s["curve"] if c.get("val_bpb") is not None] + ([s["final"]] if s.get("final") else [])
        label = wrapped(s["label"])
        for col, x_key in enumerate(("seconds", "tokens")):
            for ax, points, ys, extra in ((axes[0][col], val, [c["val_bpb"] for c in val], {"marker": "o", "ms": 3}),
                                          (axes[1][col], train, smooth([c["train_loss"] for c in train]), {})):
                xs = [c[x_key] for c in points if c.get(x_key) is not None]
                if len(xs) != len(ys) or not xs:
                    continue
                (line,) = ax.plot(xs, ys, label=label, **style, **extra)
                handles.setdefault(label, line)
    for col, x_label in enumerate(("training seconds (the budget's clock)", "training tokens")):
        axes[1][col].set_xlabel(x_label)
    for row in axes:
        row[1].xaxis.set_major_formatter(EngFormatter())
        row[1].xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
    axes[0][0].set_ylabel("val_bpb (during training; last point: final eval)")
    axes[1][0].set_ylabel("train loss (nats, smoothed)")
    key = fig.add_subplot(grid[:, 2])
    key.axis("off")
    key.legend(list(handles.values()), list(handles), loc="upper left", fontsize=7, frameon=False,
               title="configuration (median run)", title_fontsize=7, borderaxespad=0)
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
               color=POINT_COLOR, alpha=0.7, label="run")
    means = [sum(y for x, y in points if (x if numeric else str(x)) == k) /
             sum(1 for x, _ in points if (x if numeric else str(x)) == k) for k in keys]
    if join:
        ax.plot([position[k] for k in keys], means, color=FRONT_COLOR, lw=1.2, label="mean over runs at each value")
    if numeric:
        values = [float(k) for k in keys]
        scale_axis(ax, "x", values, log_x, FuncFormatter(lambda v, _: f"{v:g}"))  # 0.01, not 10^-2
        gaps = [b - a for a, b in zip(values, values[1:])]
        spread = not gaps or min(gaps) >= (values[-1] - values[0]) / 10  # far enough apart to label each
        if all(isinstance(k, int) for k in keys) and len(keys) <= 8 and spread and ax.get_xscale() != "log":
            ax.set_xticks(keys, [str(k) for k in keys])  # a grid's few values, each its own tick
    else:
        ax.set_xticks(range(len(keys)), [plain(k) for k in keys], rotation=30, ha="right")
    ax.set_xlabel(plain(parameter))
    ax.set_ylabel("val_bpb (post-quant)")
    ax.set_title(plain(title), fontsize=9)
    ax.legend(fontsize=7)
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
    if points:
        ax.scatter([x for x, _ in points], [y for _, y in points], s=14, color=POINT_COLOR, label="trial")
    if pruned:
        ax.scatter([x for x, _ in pruned], [y for _, y in pruned], s=18, marker="x", color="#999999",
                   label="pruned (val_bpb when stopped)")
    if points:
        ax.step([x for x, _ in points], best, where="post", color=FRONT_COLOR, label="best so far")
    integer_axis(ax, "x")
    ax.set_xlabel("trial")
    ax.set_ylabel("val_bpb (post-quant)")
    ax.set_title(plain(title), fontsize=9)
    ax.legend(fontsize=7)
    return to_svg(fig)


def importance_plot(importances: dict[str, float], title: str = "", trials: int | None = None) -> str | None:
    """Parameter importances (fANOVA, summing to 1) as horizontal bars, the largest on top."""
    if not importances:
        return None
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(4.8, 0.9 + 0.32 * len(names)))
    label = "importance" + (f" ({trials} completed trials)" if trials is not None else "")
    ax.barh([plain(n) for n in names], [importances[n] for n in names], color=POINT_COLOR, label=label)
    ax.set_xlabel("importance for val_bpb (fANOVA)")
    ax.set_xlim(0, 1)
    ax.set_title(plain(title), fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return to_svg(fig)
