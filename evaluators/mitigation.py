"""What each mitigated row (a fine-tune repaired, or several merged, after training) kept of its source's gain and
of the base's other skills, and which setting of each mitigation did best.

A mitigated row m was made from its source row(s): one checkpoint (tailor, wise_ft, dare) or one per tuned dataset
(the multi-task merges). T_m are the datasets they were tuned on (forgetting.tuned_sets). Values are fractions, as
in forgetting.py; tables show them as %.
"""
from __future__ import annotations

from evaluators.forgetting import MITIGATIONS, Grid, _diff, _mean, row_metrics, settings_text, source_ids, tuned_sets

NOTE = ("Each mitigated row repairs the checkpoint named as its source, or merges one fine-tune per tuned dataset "
        "(a+b). A good one keeps its source's gain on the tuned dataset(s) and gives back what the source forgot on "
        "the others. Accuracies, shares and H-scores in %; an empty cell has nothing to divide by.")
NOTATION = ("R[m][j] = accuracy on dataset j of row m, b_j = the base model's, T_m = the datasets m's source(s) were "
            "tuned on, src(t) = the source tuned on t, X[T] = mean over t in T of X[t], F = mean forgetting (see "
            "above)")
FORMULAS = (
    ("tuned acc", "A_m = R[m][T_m]", "Accuracy on what the source(s) learned"),
    ("other acc", "O_m = mean over j not in T_m of R[m][j]", "Accuracy on everything else"),
    ("gain kept", "100 * (A_m - b[T_m]) / (A_src - b[T_m]), A_src = mean over t in T_m of R[src(t)][t]",
     "The share of the fine-tuning gain the mitigation kept; empty where the source gained nothing"),
    ("base kept", "100 * O_m / O_base, O_base = mean over j not in T_m of b_j",
     "The share of the base's accuracy on the other datasets kept"),
    ("forgetting recovered", "100 * (F_src - F_m) / F_src, F_src = mean of the sources' F",
     "The share of the source's forgetting undone; empty where the source forgot nothing"),
    ("H-score", "H_m = 2 * A_m * O_m / (A_m + O_m), 0 where either is 0",
     "Harmonic mean: high only when the model both learned its task and kept the rest. The source H-score is the "
     "source's own (for a merge, the mean of its sources')"),
)


def h_score(tuned: float | None, other: float | None) -> float | None:
    """Harmonic mean of tuned and other accuracy, so that neither can make up for losing the other."""
    if tuned is None or other is None:
        return None
    return 0.0 if tuned == 0 or other == 0 else 2 * tuned * other / (tuned + other)


def _share(part: float | None, whole: float | None) -> float | None:
    """part / whole, None where there is no positive whole (nothing gained, forgotten or known) to take a share of."""
    return None if part is None or whole is None or whole <= 0 else part / whole


def _tuned_other(acc: dict[str, float | None], tuned: list[str]) -> tuple[float | None, float | None]:
    """Mean accuracy on the tuned datasets and on the others."""
    return _mean([acc[t] for t in tuned if t in acc]), _mean([v for j, v in acc.items() if j not in tuned])


def _row_h_score(g: Grid, row: dict) -> float | None:
    return h_score(*_tuned_other(g.accuracy(row["model"]), tuned_sets(row)))


def mitigation_row(g: Grid, row: dict) -> dict:
    """The shares kept and the H-scores of one mitigated row against its source(s) and the base (see FORMULAS)."""
    tuned = tuned_sets(row)
    sources = [g.row(s) for s in source_ids(row)]
    found = [s for s in sources if s is not None]
    a, o = _tuned_other(g.accuracy(row["model"]), tuned)
    base_a, base_o = _tuned_other(g.base, tuned)
    a_src = _mean([g.acc.get((s, t)) for t, s in zip(tuned, source_ids(row))])
    f_src = _mean([row_metrics(g, s)["mean_forgetting"] for s in found])
    return {
        "model": row["model"], "label": row["label"], "mitigation": row["mitigation"],
        "settings": settings_text(row, "mit_"), "source": row["source"],
        "source_label": " + ".join(s["label"] if s else i for s, i in zip(sources, source_ids(row))),
        "tuned_accuracy": a, "other_accuracy": o,
        "gain_kept": _share(_diff(a, base_a), _diff(a_src, base_a)),
        "base_kept": _share(o, base_o),
        "forgetting_recovered": _share(_diff(f_src, row_metrics(g, row)["mean_forgetting"]), f_src),
        "h_score": h_score(a, o),
        "source_h_score": _mean([_row_h_score(g, s) for s in found]),
    }


def mitigation_metrics(g: Grid) -> list[dict]:
    """One entry per mitigated row, in matrix order (mitigation, method, tuned datasets, epoch)."""
    return [mitigation_row(g, r) for r in g.mitigated()]


def best_settings(rows: list[dict]) -> list[dict]:
    """Per mitigation (MITIGATIONS order), the settings with the highest mean H-score over their rows, with the mean
    source H-score of those rows beside it; a mitigation none of whose rows has an H-score is left out."""
    best = []
    for name in MITIGATIONS:
        groups: dict[str, list[dict]] = {}
        for r in rows:
            if r["mitigation"] == name:
                groups.setdefault(r["settings"], []).append(r)
        scored = [(_mean([r["h_score"] for r in rs]), settings, rs) for settings, rs in groups.items()]
        scored = [s for s in scored if s[0] is not None]
        if scored:
            h, settings, rs = max(scored, key=lambda s: s[0])
            best.append({"mitigation": name, "settings": settings, "h_score": h, "rows": len(rs),
                         "source_h_score": _mean([r["source_h_score"] for r in rs])})
    return best
