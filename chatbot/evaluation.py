"""Offline evaluation: query sets in, trusted metrics out.

A query line is {"id", "query", "relevant": [keys], "urls": [...], "context"?, "split"?, "kind"?};
an empty `relevant` means out of scope, where the right answer is to abstain. A line with a
context is asked as a follow-up of that programme. What the desk shows is what is scored: an
abstention counts as a miss for an in-scope question.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from chatbot.config import METHODS
from chatbot.errors import MadoguchiError

K = 10  # depth of the ranking kept for MRR@10


@dataclass
class Query:
    id: str
    query: str
    relevant: list[str]
    urls: list[str] = field(default_factory=list)
    context: str | None = None
    split: str = ""
    kind: str = ""
    source: str = ""  # file:line

    @property
    def in_scope(self) -> bool:
        return bool(self.relevant)


@dataclass
class Outcome:
    """What the engine answered for one query."""

    query: Query
    ranked: list[str]  # programme keys shown, best first (empty when abstained)
    top_urls: list[str]
    abstained: bool
    ambiguous: bool
    confidence: float
    latency_ms: float
    decision: str = "answer"


def load_queries(paths: list[Path], split: str | None = None) -> list[Query]:
    queries: list[Query] = []
    for path in paths:
        for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                q = Query(id=str(item["id"]), query=item["query"], relevant=list(item["relevant"]),
                          urls=list(item.get("urls") or []), context=item.get("context") or None,
                          split=item.get("split", ""), kind=item.get("kind", ""), source=f"{path}:{lineno}")
            except (ValueError, KeyError, TypeError) as e:
                raise MadoguchiError(f"{path}:{lineno}: not a query line ({type(e).__name__}: {e}); "
                                     'expected {"id", "query", "relevant": [...], "urls": [...]}') from e
            if split is None or q.split == split:
                queries.append(q)
    return queries


def run(searcher, queries: list[Query], method: str = METHODS[0]) -> list[Outcome]:
    outcomes = []
    for q in queries:
        started = time.perf_counter()
        answer = searcher.search(q.query, top_k=K, context=q.context, method=method)
        latency = (time.perf_counter() - started) * 1000
        ranked = [r.key for r in answer.results]
        outcomes.append(Outcome(q, ranked, answer.results[0].urls if answer.results else [],
                                answer.abstained, answer.ambiguous, answer.confidence, latency, answer.decision))
    return outcomes


def metrics(outcomes: list[Outcome], method: str = METHODS[0]) -> dict:
    """hit@1, hit@3, MRR@10 and URL@1 over in-scope queries; abstention over all; latency."""
    inside = [o for o in outcomes if o.query.in_scope]
    outside = [o for o in outcomes if not o.query.in_scope]
    abstained = [o for o in outcomes if o.abstained]

    def rank_of(o: Outcome) -> int | None:
        for i, key in enumerate(o.ranked[:K], start=1):
            if key in o.query.relevant:
                return i
        return None

    ranks = [rank_of(o) for o in inside]
    with_urls = [o for o in inside if o.query.urls]
    latencies = [o.latency_ms for o in outcomes]
    return {
        "method": method,
        "n": len(outcomes),
        "n_in_scope": len(inside),
        "n_out_of_scope": len(outside),
        "hit@1": _ratio(sum(r == 1 for r in ranks), len(inside)),
        "hit@3": _ratio(sum(r is not None and r <= 3 for r in ranks), len(inside)),
        "mrr@10": _ratio(sum(1 / r for r in ranks if r is not None), len(inside)),
        "url@1": _ratio(sum(bool(set(o.top_urls) & set(o.query.urls)) for o in with_urls), len(with_urls)),
        "abstain_precision": _ratio(sum(not o.query.in_scope for o in abstained), len(abstained)),
        "abstain_recall": _ratio(sum(o.abstained for o in outside), len(outside)),
        "false_abstain_rate": _ratio(sum(o.abstained for o in inside), len(inside)),
        # the three decisions: in scope sent away ("none"), offered as choices ("suggest"), and
        # out of scope answered confidently ("answer")
        "in_scope_none": _ratio(sum(o.decision == "none" for o in inside), len(inside)),
        "in_scope_suggest": _ratio(sum(o.decision == "suggest" for o in inside), len(inside)),
        "out_of_scope_answer": _ratio(sum(o.decision == "answer" for o in outside), len(outside)),
        "ambiguous_rate": _ratio(sum(o.ambiguous for o in outcomes), len(outcomes)),
        "latency_ms": {"p50": _percentile(latencies, 50), "p95": _percentile(latencies, 95)},
    }


def failures(outcomes: list[Outcome]) -> list[dict]:
    """The questions not answered right at rank 1, with what came first."""
    out = []
    for o in outcomes:
        right = (o.abstained and not o.query.in_scope) or (
            o.query.in_scope and o.ranked[:1] and o.ranked[0] in o.query.relevant)
        if not right:
            out.append({"id": o.query.id, "query": o.query.query, "context": o.query.context,
                        "relevant": o.query.relevant, "got": "ABSTAINED" if o.abstained else o.ranked[:3],
                        "decision": o.decision, "confidence": round(o.confidence, 3)})
    return out


def _ratio(part: float, whole: int) -> float | None:
    """None when there is nothing to measure (e.g. no abstention at all for precision)."""
    return round(part / whole, 4) if whole else None


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None
