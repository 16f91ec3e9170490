"""The report of bench.active_learning: labels-saved figures, the markdown table and the plot.

    from bench.active_learning_report import summarise, markdown, plot
    summary = summarise(results, cfg)          # results: bench.active_learning.run_all's
    print(markdown(summary, cfg)); plot(summary, cfg, "docs/active_learning.png")
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

MARK_BEGIN = "<!-- bench.active_learning results: begin -->"
MARK_END = "<!-- bench.active_learning results: end -->"


def labels_to_reach(budgets, acc, target):
    """Labels at which the curve acc (per budget) first reaches target, linearly interpolated between
    budgets; None when it never does."""
    for i, a in enumerate(acc):
        if a >= target:
            if i == 0:
                return float(budgets[0])
            a0, b0, b1 = acc[i - 1], budgets[i - 1], budgets[i]
            return float(b0 + (target - a0) / (a - a0) * (b1 - b0))
    return None


def summarise(results: dict, cfg) -> dict:
    budgets = list(cfg.budgets)
    out = {"budgets": budgets, "strategies": {}}
    for st, by_seed in results.items():
        acc = np.array([[r["accuracy"] for r in rounds] for rounds in by_seed.values()])
        out["strategies"][st] = {"mean": acc.mean(0).tolist(),
                                 "std": (acc.std(0, ddof=1) if len(acc) > 1 else np.zeros(acc.shape[1])).tolist(),
                                 "seeds": len(acc)}
    if "random" in results:
        target = out["strategies"]["random"]["mean"][-1]
        base = labels_to_reach(budgets, out["strategies"]["random"]["mean"], target)
        saved = {}
        for st, s in out["strategies"].items():
            need = labels_to_reach(budgets, s["mean"], target)
            per_seed = []
            for seed, rounds in results[st].items():
                t = results["random"][seed][-1]["accuracy"]
                b = labels_to_reach(budgets, [r["accuracy"] for r in results["random"][seed]], t)
                n = labels_to_reach(budgets, [r["accuracy"] for r in rounds], t)
                per_seed.append(None if n is None else 100.0 * (1 - n / b))
            saved[st] = {"labels": need, "saving_pct": None if need is None else 100.0 * (1 - need / base),
                         "per_seed_saving_pct": per_seed}
        out["target"] = {"accuracy": target, "strategy": "random", "at_labels": budgets[-1], "saved": saved}
    return out


def _cell(mean, std, n):
    return f"{mean:.3f} ± {std:.3f}" if n > 1 else f"{mean:.3f}"


def markdown(summary: dict, cfg) -> str:
    budgets = summary["budgets"]
    cols = [b for b in cfg.table if b in budgets] or budgets
    lines = ["| strategy | " + " | ".join(f"{b} labels" for b in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for st, s in summary["strategies"].items():
        cells = [_cell(s["mean"][budgets.index(b)], s["std"][budgets.index(b)], s["seeds"]) for b in cols]
        lines.append(f"| {st} | " + " | ".join(cells) + " |")
    n_seeds = max(s["seeds"] for s in summary["strategies"].values())
    lines += ["", f"Held-out accuracy ({cfg.test} galaxies), mean ± std over {n_seeds} seed(s)."]
    t = summary.get("target")
    if t:
        lines += ["", f"Labels needed to reach {t['accuracy']:.3f}, the accuracy random reaches at "
                      f"{t['at_labels']} labels (interpolated on the mean curves):", "",
                  "| strategy | labels needed | saving vs random | saving per seed |", "|---|---|---|---|"]
        for st, v in t["saved"].items():
            need = f"{v['labels']:.0f}" if v["labels"] is not None else f"not reached by {t['at_labels']}"
            pct = f"{v['saving_pct']:+.0f} %" if v["saving_pct"] is not None else "< 0 %"
            per = ", ".join("n/r" if p is None else f"{p:+.0f} %" for p in v["per_seed_saving_pct"])
            lines.append(f"| {st} | {need} | {pct} | {per} |")
        lines += ["", "Per seed: the same measure against that seed's random curve "
                      "(n/r: not reached within the budgets)."]
    return "\n".join(lines) + "\n"


def write_markdown(path, block: str) -> Path:
    """Put block between the marker comments of the page at path (created if missing, markers
    appended if absent); the rest of the page is left as it is."""
    path = Path(path)
    text = path.read_text() if path.exists() else "# Active learning on synthetic galaxies\n\n"
    wrapped = f"{MARK_BEGIN}\n{block}{MARK_END}"
    if MARK_BEGIN in text and MARK_END in text:
        head, rest = text.split(MARK_BEGIN, 1)
        text = head + wrapped + rest.split(MARK_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + wrapped + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def plot(summary: dict, cfg, path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = np.asarray(summary["budgets"], float)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    names = list(summary["strategies"])
    span = budgets[-1] - budgets[0] if len(budgets) > 1 else 1.0
    for i, st in enumerate(names):
        s = summary["strategies"][st]
        dx = (i - (len(names) - 1) / 2) * 0.008 * span  # keep the error bars apart
        ax.errorbar(budgets + dx, s["mean"], yerr=s["std"], marker="o", ms=4, capsize=3, lw=1.6,
                    label=f"{st}")
    t = summary.get("target")
    if t:
        ax.axhline(t["accuracy"], color="grey", ls="--", lw=1,
                   label=f"random at {t['at_labels']} labels ({t['accuracy']:.3f})")
    n_seeds = max(s["seeds"] for s in summary["strategies"].values())
    ax.set_xlabel("labelled galaxies", fontsize=12)
    ax.set_ylabel(f"held-out accuracy ({cfg.test} galaxies)", fontsize=12)
    ax.set_title(f"Active learning, synthetic Galaxy10 at {cfg.size} px: mean ± std over {n_seeds} seed(s)",
                 fontsize=12)
    ax.set_xticks(budgets)
    ax.tick_params(labelsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=10, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, facecolor="white")
    plt.close(fig)
    return path
