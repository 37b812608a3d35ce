"""Plots for people who would rather look than read: metrics per method, and where the
abstention threshold falls between in-scope and out-of-scope questions."""

from __future__ import annotations

from pathlib import Path

METRICS = ["hit@1", "hit@3", "mrr@10", "url@1", "abstain_recall", "false_abstain_rate"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def evaluation(results: list[dict], runs: dict, settings, prefix: Path) -> list[Path]:
    plt = _pyplot()
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    written = []

    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(results)
    for i, m in enumerate(results):
        values = [m[name] or 0.0 for name in METRICS]
        ax.bar([x + i * width for x in range(len(METRICS))], values, width, label=m["method"])
    ax.set_xticks([x + width * (len(results) - 1) / 2 for x in range(len(METRICS))], METRICS)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"metrics per method (n = {results[0]['n']})")
    ax.legend()
    fig.tight_layout()
    written.append(prefix.with_name(prefix.name + "-methods.png"))
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    if "hybrid" in runs:
        outcomes = [o for o in runs["hybrid"] if not o.query.context]
        inside = [o.confidence for o in outcomes if o.query.in_scope]
        outside = [o.confidence for o in outcomes if not o.query.in_scope]
        fig, ax = plt.subplots(figsize=(8, 4))
        bins = [i / 40 for i in range(41)]
        ax.hist(inside, bins=bins, alpha=0.6, label=f"in scope ({len(inside)})")
        ax.hist(outside, bins=bins, alpha=0.6, label=f"out of scope ({len(outside)})")
        ax.axvline(settings.abstain_threshold, color="black", linestyle="--",
                   label=f"abstain below {settings.abstain_threshold:.3f}")
        ax.set_xlabel("P(in scope) from the abstention model")
        ax.set_ylabel("questions")
        ax.set_title("abstention: questions asked alone")
        ax.legend()
        fig.tight_layout()
        written.append(prefix.with_name(prefix.name + "-abstention.png"))
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written
