"""The Pareto picture of a sweep: accuracy against predicted cost, searched (and
retrained) vs uniform."""
from __future__ import annotations


def pareto_front(points: list[dict]) -> list[dict]:
    """Points no other point beats on both cost (lower) and accuracy (higher)."""
    front = [p for p in points
             if not any(q["predicted"] <= p["predicted"] and q["accuracy"] >= p["accuracy"]
                        and (q["predicted"], q["accuracy"]) != (p["predicted"], p["accuracy"])
                        for q in points)]
    return sorted(front, key=lambda p: p["predicted"])


def plot_pareto(points: list[dict], unit: str, path: str, title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for kind, marker in (("searched", "o"), ("retrained", "^"), ("uniform", "s")):
        mine = [p for p in points if p["kind"] == kind]
        if mine:
            ax.scatter([p["predicted"] for p in mine], [100 * p["accuracy"] for p in mine],
                       marker=marker, label=kind, zorder=3)
            for p in mine:
                ax.annotate(p["label"], (p["predicted"], 100 * p["accuracy"]), fontsize=7,
                            xytext=(4, 4), textcoords="offset points")
    front = pareto_front(points)
    ax.plot([p["predicted"] for p in front], [100 * p["accuracy"] for p in front], "k--",
            alpha=0.5, label="Pareto front")
    ax.set_xlabel(f"predicted cost ({unit})")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
