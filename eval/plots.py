"""The one quality-vs-cost plot of the project (paper scale and tiny world alike), coloured by family.

A family's colour comes from the method configs (configs/method/*.yaml: `family` and `color` side by
side), so every plot draws GtR, DiSA, ... in the same colour; a family no config colours gets a fixed
colour from its name. Points are labelled with their row; lines join only the points of one sweep.
"""
import hashlib
import math
from pathlib import Path

from omegaconf import OmegaConf

from gtr.config import CONFIG_DIR

PALETTE = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
           "tab:gray", "tab:olive", "tab:cyan"]

def family_colors():
    """{family: colour} declared by the method configs (a config that names a family and a colour)."""
    colors = {}
    for path in sorted((CONFIG_DIR / "method").glob("*.yaml")):
        node = OmegaConf.load(path)
        if node.get("family") and node.get("color"):
            colors.setdefault(str(node.family), str(node.color))
    return colors

def color_of(family, colors):
    """The family's declared colour, else one picked from its name (the same in every run)."""
    if family in colors:
        return colors[family]
    return PALETTE[int(hashlib.sha1(str(family).encode()).hexdigest(), 16) % len(PALETTE)]

def plot_quality_vs_cost(points, path, x="flops", y="fid", xlabel="FLOPs per image", ylabel="FID",
                         title=None, log_y=False):
    """Write a PNG: one panel per `panel` value, `y` against `x` for each point.

    points: a DataFrame with columns panel, family, label, sweep (points of one sweep are joined, in
    x order; empty: not joined), side ("ours" filled markers / "paper" hollow), `x`, `y`, and optionally
    `y`_lo / `y`_hi (a 95% interval, drawn as an error bar) and `x`_lo / `x`_hi, and `front` (True: the
    point is on a Pareto front, ringed in black).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    data = points.dropna(subset=[x, y])
    panels = list(dict.fromkeys(data["panel"])) or [""]
    colors = family_colors()
    fig = Figure(figsize=(5.5 * len(panels), 4.8))
    FigureCanvasAgg(fig)
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        rows = data[data["panel"] == panel]
        for (family, sweep, side), line in rows.groupby(["family", "sweep", "side"], dropna=False, sort=False):
            if isinstance(sweep, str) and sweep and len(line) > 1:
                line = line.sort_values(x)
                ax.plot(line[x], line[y], color=color_of(family, colors), linestyle="-" if side == "ours" else "--",
                        linewidth=1, zorder=1)
        for _, p in rows.iterrows():
            color = color_of(p["family"], colors)
            hollow = p["side"] == "paper"
            yerr = xerr = None
            if f"{y}_lo" in p and not (math.isnan(p[f"{y}_lo"]) or math.isnan(p[f"{y}_hi"])):
                yerr = [[p[y] - p[f"{y}_lo"]], [p[f"{y}_hi"] - p[y]]]
            if f"{x}_lo" in p and not (math.isnan(p[f"{x}_lo"]) or math.isnan(p[f"{x}_hi"])):
                xerr = [[p[x] - p[f"{x}_lo"]], [p[f"{x}_hi"] - p[x]]]
            ax.errorbar([p[x]], [p[y]], yerr=yerr, xerr=xerr, fmt="o", color=color, ecolor=color, elinewidth=0.8,
                        capsize=2, markersize=5, markerfacecolor="none" if hollow else color, zorder=2)
            if bool(p.get("front", False)):
                ax.scatter([p[x]], [p[y]], s=110, facecolors="none", edgecolors="k", linewidths=0.8, zorder=3)
            ax.annotate(str(p["label"]), (p[x], p[y]), textcoords="offset points", xytext=(4, 3), fontsize=6,
                        color=color)
        ax.set_title(str(panel))
        ax.set_xlabel(xlabel)
        if log_y:
            ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
    fig.axes[0].set_ylabel(ylabel)
    handles = [Line2D([], [], color=color_of(f, colors), marker="o", linestyle="-", label=f)
               for f in dict.fromkeys(data["family"])]
    if {"ours", "paper"} <= set(data["side"]):
        handles += [Line2D([], [], color="k", marker="o", markerfacecolor="none", linestyle="--", label="paper"),
                    Line2D([], [], color="k", marker="o", linestyle="-", label="ours")]
    fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 5), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, y=0.02, fontsize=8)
    fig.tight_layout(rect=(0, 0.04 if title else 0, 1, 0.9 if len(handles) <= 5 else 0.85))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    return path
