"""Calibration: choose the search settings from the tuning queries, never the test ones.

`python -m chatbot calibrate` runs this on the queries whose split is "tune" and writes the
result to chatbot/calibration/<model>.json (settings and the figures that justified them) and
<model>.npz (the tuning questions' vectors and labels, for the abstention's kNN feature):

1. fusion: reciprocal rank fusion against min-max score fusion, over a small grid, by hit@1
   then MRR on the in-scope questions asked alone; then, the same way, how much the question
   bank adds (its weight and the cosine under which a labelled question says nothing);
2. decisions: a logistic model over Searcher._features, fitted on in-scope vs out-of-scope
   questions, and two cuts of least cost on its probability: under the first the answer is
   "none" (an in-scope question sent away costs NONE_COST off-topic questions not sent away);
   from the second it is a confident "answer" (an off-topic question answered confidently
   costs ANSWER_COST in-scope questions offered as suggestions); "suggest" in between;
3. follow-ups: the margin by which another programme must beat the context one;
4. ambiguity: the margin under which the first two programmes count as close.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from chatbot import evaluation
from chatbot.text import normalise
from chatbot.search import Examples, Searcher, Settings, calibration_files

FUSIONS = [{"fusion": "rrf", "rrf_k": k} for k in (5, 10, 20, 30, 60)] + [
    {"fusion": "score", "dense_weight": w} for w in (0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9)]
BANK_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5)
BANK_FLOORS = (0.8, 0.85, 0.9, 0.92, 0.95)
NONE_COST = 6  # a visitor with a real question sent away with nothing weighs as 6 off-topic suggestions
ANSWER_COST = 3  # an off-topic question answered confidently weighs as 3 right answers offered as choices
SWITCH_MARGINS = (0.0, 0.1, 0.2, 0.3)
SWITCH_CONFIDENCES = (0.3, 0.5, 0.7, 0.8, 0.9)
AMBIGUITY_MARGINS = (0.0, 0.02, 0.05, 0.08, 0.1, 0.15)
AMBIGUITY_LIFT, AMBIGUITY_BUDGET = 3.0, 0.15


def calibrate(searcher: Searcher, queries: list[evaluation.Query], log=print) -> dict:
    alone = [q for q in queries if not q.context]
    inside = [q for q in alone if q.in_scope]
    followups = [q for q in queries if q.context]
    report: dict = {}

    # 1. fusion, judged without abstention (threshold 0 answers everything)
    scored = []
    for option in FUSIONS:
        searcher.settings = replace(Settings(), **option, abstain_threshold=0.0)
        m = evaluation.metrics(evaluation.run(searcher, inside))
        scored.append((m["hit@1"], m["mrr@10"], option))
        log(f"fusion {option}: hit@1 {m['hit@1']} mrr@10 {m['mrr@10']}")
    best = max(scored, key=lambda s: (s[0], s[1]))
    report["fusion"] = [{"option": o, "hit@1": h, "mrr@10": r} for h, r, o in scored]
    settings = replace(Settings(), **best[2])

    # 1b. the question bank's weight, on top of the chosen fusion (0 = the bank only informs decisions)
    scored = []
    for weight in BANK_WEIGHTS:
        for floor in BANK_FLOORS if weight else BANK_FLOORS[:1]:
            searcher.settings = replace(settings, bank_weight=weight, bank_floor=floor, abstain_threshold=0.0)
            m = evaluation.metrics(evaluation.run(searcher, inside))
            scored.append((m["hit@1"], m["mrr@10"], -weight, {"bank_weight": weight, "bank_floor": floor}))
            log(f"bank weight {weight} floor {floor}: hit@1 {m['hit@1']} mrr@10 {m['mrr@10']}")
    # The bank should speak for near paraphrases of its questions (a staff correction), not for
    # every question of the same template ("Where can I search … patents?"): among the options
    # within one question of the best hit@1, the highest floor, then the best MRR.
    top = max(s[0] for s in scored)
    near = [s for s in scored if s[3]["bank_weight"] and s[0] >= top - 1 / len(inside)]
    best = max(near, key=lambda s: (s[3]["bank_floor"], s[1], s[2])) if near else max(scored, key=lambda s: s[:3])
    report["bank"] = [{"option": o, "hit@1": h, "mrr@10": r} for h, r, _, o in scored]
    settings = replace(settings, **best[3])

    # 2. abstention model. The tuning questions asked alone become the labelled examples of
    # the kNN feature; each is scored with itself left out, as an unseen question would be.
    searcher.settings = settings
    vectors = searcher.encoder.encode_queries([normalise(q.query) for q in alone]).astype(np.float32)
    searcher.examples = Examples(vectors, np.array([q.in_scope for q in alone]))
    x = np.array([searcher.rank(normalise(q.query), exclude=i).features for i, q in enumerate(alone)])
    y = np.array([1.0 if q.in_scope else 0.0 for q in alone])
    weights, bias = _logistic(x, y)
    p = 1 / (1 + np.exp(-(x @ weights + bias)))
    none_cut = _cut(p[y == 1], p[y == 0], NONE_COST, 1)
    answer_cut = max(none_cut, _cut(p[y == 1], p[y == 0], 1, ANSWER_COST))
    settings = replace(settings, abstain_weights=tuple(float(w) for w in weights), abstain_bias=float(bias),
                       abstain_threshold=none_cut, answer_threshold=answer_cut)
    report["abstention"] = {
        "features": ["dense top cosine", "dense peak (z)", "IDF share covered by best BM25 passage",
                     "log1p BM25 max", "Latin share", "kNN margin: nearest out-of-scope minus in-scope example",
                     "IDF share covered (English)", "log1p BM25 max (English)"],
        "in_scope_min": float(p[y == 1].min()), "out_of_scope_max": float(p[y == 0].max()),
        "out_of_scope_none": int((p[y == 0] < none_cut).sum()),
        "out_of_scope_answered": int((p[y == 0] >= answer_cut).sum()), "out_of_scope": int((y == 0).sum()),
        "in_scope_none": int((p[y == 1] < none_cut).sum()),
        "in_scope_suggested": int(((p[y == 1] >= none_cut) & (p[y == 1] < answer_cut)).sum()),
        "in_scope": int((y == 1).sum()),
    }
    log(f"decisions: weights {np.round(weights, 3)} bias {bias:.3f} cuts none<{none_cut:.3f}, answer>={answer_cut:.3f}; "
        f"in-scope min p {p[y == 1].min():.3f}, out-of-scope p {np.round(np.sort(p[y == 0]), 3)}")

    # 3. follow-ups: how sure and how far ahead a question must be to leave the context
    if followups:
        rows = []
        for confidence in SWITCH_CONFIDENCES:
            for margin in SWITCH_MARGINS:
                searcher.settings = replace(settings, switch_confidence=confidence, switch_margin=margin)
                m = evaluation.metrics(evaluation.run(searcher, followups))
                rows.append((m["hit@1"], -confidence, -margin, confidence, margin))
                log(f"switch confidence {confidence} margin {margin}: follow-up hit@1 {m['hit@1']}")
        best_row = max(rows)
        settings = replace(settings, switch_confidence=best_row[3], switch_margin=best_row[4])
        report["switch"] = [{"confidence": r[3], "margin": r[4], "hit@1": r[0]} for r in rows]

    # 4. ambiguity: the widest margin whose flag is informative (the first answer is wrong at least
    # AMBIGUITY_LIFT times as often when flagged as overall) and rare enough for the visitor
    # (at most AMBIGUITY_BUDGET of the questions get 「もしかして」 choices).
    chosen = 0.0
    for margin in AMBIGUITY_MARGINS:
        searcher.settings = replace(settings, ambiguity_margin=margin)
        outcomes = evaluation.run(searcher, inside)
        wrong = [not o.ranked or o.ranked[0] not in o.query.relevant for o in outcomes]
        flagged = [w for w, o in zip(wrong, outcomes) if o.ambiguous]
        log(f"ambiguity margin {margin}: flags {len(flagged)}, of which wrong at rank 1 {sum(flagged)}")
        informative = flagged and sum(flagged) / len(flagged) >= AMBIGUITY_LIFT * sum(wrong) / len(wrong)
        if informative and len(flagged) <= AMBIGUITY_BUDGET * len(outcomes):
            chosen = margin
    settings = replace(settings, ambiguity_margin=chosen)
    searcher.settings = settings
    return {"settings": asdict(settings), "report": report, "examples": searcher.examples}


def save(model_id: str, result: dict, queries_file: str) -> tuple[Path, Path]:
    settings_file, examples_file = calibration_files(model_id)
    settings_file.parent.mkdir(exist_ok=True)
    saved = {**result["settings"], "model": model_id, "calibrated_at": time.strftime("%Y-%m-%d"),
             "tuned_on": f"{queries_file} (split=tune; dev queries whole)", "report": result["report"]}
    settings_file.write_text(json.dumps(saved, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    examples = result["examples"]
    np.savez_compressed(examples_file, vectors=examples.vectors.astype(np.float16), in_scope=examples.in_scope)
    return settings_file, examples_file


def _logistic(x: np.ndarray, y: np.ndarray, l2: float = 0.01, steps: int = 5000):
    """Plain logistic regression by gradient descent on standardised features (few, small)."""
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = (x - mean) / std
    w, b = np.zeros(z.shape[1]), 0.0
    balance = np.where(y == 1, 0.5 / y.mean(), 0.5 / (1 - y.mean()))  # classes weigh the same
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(z @ w + b)))
        g = (p - y) * balance
        w -= 0.1 * (z.T @ g / len(y) + l2 * w)
        b -= 0.1 * g.mean()
    # back to raw features, so the search needs no scaler
    return w / std, b - float((w / std) @ mean)


def _cut(inside: np.ndarray, outside: np.ndarray, below_cost: float, above_cost: float) -> float:
    """The cut that costs least: `below_cost` per in-scope question under it, `above_cost` per
    out-of-scope one at or above it; placed halfway between neighbouring probabilities.
    Each class is weighed by its share, so the costs mean the same whatever the class sizes."""
    values = np.unique(np.concatenate([inside, outside, [0.0, 1.0]]))
    cuts = (values[:-1] + values[1:]) / 2
    costs = [below_cost * (inside < t).mean() + above_cost * (outside >= t).mean() for t in cuts]
    return float(cuts[int(np.argmin(costs))])  # the lowest of equal-cost cuts: leans to answering
