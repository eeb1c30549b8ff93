"""The report's pictures as PNG bytes (Agg backend: no display needed on a cluster node)."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from evaluators.forgetting import MITIGATIONS, Grid, source_ids, tuned_sets  # noqa: E402

METHOD_STYLE = {"linear": "-", "lora": "--"}
METHOD_COLOR = {"linear": "tab:blue", "lora": "tab:orange"}
MARKERS = "osD^v<>Ph*X"
# Per mitigation, a marker and a colour that no method and no tuned dataset uses.
MITIGATION_STYLE = dict(zip(MITIGATIONS[1:], zip("P*dXph", ("tab:green", "tab:red", "tab:purple", "tab:brown",
                                                             "tab:pink", "tab:olive"))))


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _pct(v: float | None) -> float:
    return np.nan if v is None else 100 * v


def heatmap(g: Grid) -> bytes:
    """Cell text = accuracy %, colour = change versus the base (pp, red = lost, blue = gained); tuned cells boxed."""
    base = g.base
    acc = np.array([[_pct(g.acc.get((r["model"], j))) for j in g.datasets] for r in g.rows])
    change = acc - np.array([_pct(base.get(j)) for j in g.datasets])
    limit = max(1.0, float(np.nanmax(np.abs(change)))) if np.isfinite(change).any() else 1.0
    width = 1.4 + 1.4 * len(g.datasets) + 0.075 * max(len(r["label"]) for r in g.rows)  # room for the row labels
    fig, ax = plt.subplots(figsize=(max(width, 6.5), 1.2 + 0.42 * len(g.rows)), layout="constrained")
    ax.set_facecolor("0.85")  # missing cells
    image = ax.imshow(np.ma.masked_invalid(change), cmap="RdBu", norm=TwoSlopeNorm(0, -limit, limit), aspect="auto")
    for i, r in enumerate(g.rows):
        for k, j in enumerate(g.datasets):
            strong = np.isfinite(change[i, k]) and abs(change[i, k]) > 0.6 * limit
            text = "" if np.isnan(acc[i, k]) else f"{acc[i, k]:.1f}"
            ax.text(k, i, text, ha="center", va="center", fontsize=9, color="white" if strong else "black")
            if j in tuned_sets(r):
                ax.add_patch(Rectangle((k - 0.5, i - 0.5), 1, 1, fill=False, lw=2, ec="black"))
    ax.xaxis.tick_top()
    ax.set_xticks(range(len(g.datasets)), g.datasets, rotation=30, ha="left", rotation_mode="anchor")
    ax.set_yticks(range(len(g.rows)), [r["label"] for r in g.rows])
    ax.set_xlabel("cell = accuracy %, colour = change vs base, boxed = the tuned dataset", fontsize=9)
    fig.colorbar(image, ax=ax, label="change vs base (pp)", shrink=0.8)
    return _png(fig)


def curves(g: Grid, highlight: set[str]) -> bytes:
    """Accuracy per epoch, one panel per tuned dataset, epoch 0 = the base; trials in `highlight` drawn bold."""
    base = g.base
    trained = sorted({r["train_dataset"] for r in g.checkpoints()})
    colors = {j: plt.get_cmap("tab10")(k % 10) for k, j in enumerate(g.datasets)}
    fig, axes = plt.subplots(1, max(1, len(trained)), figsize=(1 + 4.2 * max(1, len(trained)), 4.2),
                             squeeze=False, sharey=True, layout="constrained")
    if not trained:
        axes[0][0].text(0.5, 0.5, "no fine-tuned checkpoint evaluated yet", ha="center", transform=axes[0][0].transAxes)
    for ax, t in zip(axes[0], trained):
        for trial in sorted({r["trial_id"] for r in g.checkpoints() if r["train_dataset"] == t}):
            rows = sorted((r for r in g.checkpoints() if r["trial_id"] == trial), key=lambda r: r["epoch"])
            shown = trial in highlight
            for j in g.datasets:
                points = [(0, base.get(j))] + [(r["epoch"], g.acc.get((r["model"], j))) for r in rows]
                known = [(e, 100 * v) for e, v in points if v is not None]
                if not known:
                    continue
                ax.plot(*zip(*known), METHOD_STYLE[rows[0]["method"]], color=colors[j], marker="o", ms=3,
                        lw=(2.6 if j == t else 1.4) if shown else 0.8, alpha=1.0 if shown else 0.25)
        ax.set_title(f"tuned on {t}")
        ax.set_xlabel("epoch (0 = base)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy %")
    handles = [Line2D([], [], color=c, lw=2, label=f"eval {j}") for j, c in colors.items()]
    handles += [Line2D([], [], color="black", ls=s, label=m) for m, s in METHOD_STYLE.items()]
    fig.legend(handles=handles, loc="outside right center", fontsize=9)
    return _png(fig)


def _mitigated_points(ax, usable: dict[str, dict]) -> list[Line2D]:
    """Each mitigated row in its mitigation's marker and colour, a thin line to each of its sources' points; returns
    the legend handles of the mitigations drawn."""
    drawn = set()
    for p in usable.values():
        if p["mitigation"] == "none":
            continue
        marker, color = MITIGATION_STYLE[p["mitigation"]]
        x, y = 100 * p["mean_forgetting"], 100 * p["gain"]
        for s in (usable[s] for s in source_ids(p) if s in usable):
            ax.plot([100 * s["mean_forgetting"], x], [100 * s["gain"], y], color=color, lw=0.7, alpha=0.6, zorder=2)
        ax.scatter(x, y, marker=marker, color=color, s=55, edgecolors="black", linewidths=0.4, zorder=3)
        drawn.add(p["mitigation"])
    return [Line2D([], [], color=c, marker=mk, ls="-", lw=0.7, label=f"{m} (line to its source)")
            for m, (mk, c) in MITIGATION_STYLE.items() if m in drawn]


def tradeoff(g: Grid, points: list[dict], front: list[str]) -> bytes:
    """Gain against mean forgetting of every checkpoint, and of every mitigated row linked to its source(s); the
    Pareto front of the checkpoints stepped and numbered, its key beside."""
    trained = sorted({r["train_dataset"] for r in g.checkpoints()})
    markers = {t: MARKERS[k % len(MARKERS)] for k, t in enumerate(trained)}
    fig, ax = plt.subplots(figsize=(11, max(5.2, 1.5 + 0.22 * len(front))), layout="constrained")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.axvline(0, color="0.6", lw=0.8)
    usable = {p["model"]: p for p in points if p["gain"] is not None and p["mean_forgetting"] is not None}
    for p in usable.values():
        if p["mitigation"] == "none":
            ax.scatter(100 * p["mean_forgetting"], 100 * p["gain"], marker=markers[p["train_dataset"]],
                       color=METHOD_COLOR[p["method"]], s=40, alpha=0.85, zorder=3)
    mitigation_handles = _mitigated_points(ax, usable)
    on_front = [usable[m] for m in front]
    xs, ys = [100 * p["mean_forgetting"] for p in on_front], [100 * p["gain"] for p in on_front]
    ax.step(xs, ys, where="post", color="black", lw=1.2)
    ax.scatter(xs, ys, s=160, facecolors="none", edgecolors="black", lw=1.4, zorder=4)
    for k, (x, y) in enumerate(zip(xs, ys), 1):
        ax.annotate(str(k), (x, y), xytext=(7, -12), textcoords="offset points", fontsize=9, weight="bold")
    handles = [Line2D([], [], color=c, marker="o", ls="", label=m) for m, c in METHOD_COLOR.items()]
    handles += [Line2D([], [], color="0.3", marker=mk, ls="", label=f"tuned on {t}") for t, mk in markers.items()]
    handles += mitigation_handles
    handles += [Line2D([], [], color="black", marker="o", mfc="none", ms=10, label="Pareto front")]
    ax.legend(handles=handles, fontsize=8, loc="lower right")
    key = [Line2D([], [], ls="", label=f"{k}  {p['label']}") for k, p in enumerate(on_front, 1)]
    if key:
        fig.legend(handles=key, loc="outside right upper", fontsize=8, title="Pareto front", handlelength=0,
                   alignment="left")
    ax.margins(x=0.08, y=0.08)
    ax.set_xlabel("mean forgetting on the other datasets (pp, lower is better)")
    ax.set_ylabel("gain on the tuned dataset (pp, higher is better)")
    ax.grid(alpha=0.3)
    return _png(fig)
