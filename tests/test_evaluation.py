"""The metrics on small hand-made rankings, so that the reported numbers can be trusted."""

import json

import pytest

from chatbot.errors import MadoguchiError
from chatbot.evaluation import Outcome, Query, failures, load_queries, metrics


def outcome(relevant, ranked, *, abstained=False, urls=(), top_urls=(), latency=1.0):
    q = Query(id="x", query="q", relevant=list(relevant), urls=list(urls))
    return Outcome(q, list(ranked), list(top_urls), abstained, False, 0.5, latency)


def test_hit_and_mrr():
    m = metrics([
        outcome(["a"], ["a", "b", "c"]),  # rank 1
        outcome(["b"], ["a", "b", "c"]),  # rank 2
        outcome(["c", "z"], ["a", "b", "c"]),  # rank 3 (either relevant key counts)
        outcome(["d"], ["a", "b", "c"]),  # missing
    ])
    assert m["hit@1"] == 0.25
    assert m["hit@3"] == 0.75
    assert m["mrr@10"] == pytest.approx(round((1 + 1 / 2 + 1 / 3) / 4, 4))
    assert m["n"] == m["n_in_scope"] == 4


def test_rank_beyond_ten_does_not_count_for_mrr():
    ranked = [f"k{i}" for i in range(12)]
    assert metrics([outcome(["k10"], ranked)])["mrr@10"] == 0.0
    assert metrics([outcome(["k9"], ranked)])["mrr@10"] == 0.1


def test_url_at_1_counts_only_queries_with_expected_urls():
    m = metrics([
        outcome(["a"], ["a"], urls=["u1", "u2"], top_urls=["u2"]),
        outcome(["a"], ["b"], urls=["u1"], top_urls=["u3"]),
        outcome(["a"], ["a"], urls=[], top_urls=["u9"]),
    ])
    assert m["url@1"] == 0.5


def test_abstention_precision_recall_and_false_rate():
    m = metrics([
        outcome([], [], abstained=True),  # right abstention
        outcome([], ["a"]),  # missed out-of-scope
        outcome(["a"], [], abstained=True),  # false abstention, also a miss
        outcome(["a"], ["a"]),
    ])
    assert m["abstain_precision"] == 0.5
    assert m["abstain_recall"] == 0.5
    assert m["false_abstain_rate"] == 0.5
    assert m["hit@1"] == 0.5  # the abstained in-scope question is a miss
    assert (m["n_in_scope"], m["n_out_of_scope"]) == (2, 2)


def test_no_abstention_gives_no_precision_rather_than_a_guess():
    m = metrics([outcome(["a"], ["a"])])
    assert m["abstain_precision"] is None and m["abstain_recall"] is None


def test_latency_percentiles():
    m = metrics([outcome(["a"], ["a"], latency=float(i)) for i in range(1, 101)])
    assert m["latency_ms"] == {"p50": 50.5, "p95": 95.05}


def test_failures_lists_misses_with_what_came_first():
    rows = failures([outcome(["a"], ["b", "a"]), outcome(["a"], ["a"]), outcome([], ["c"]),
                     outcome([], [], abstained=True)])
    assert [(r["relevant"], r["got"]) for r in rows] == [(["a"], ["b", "a"]), ([], ["c"])]


def test_load_queries_filters_by_split_and_names_bad_lines(tmp_path):
    f = tmp_path / "q.jsonl"
    lines = [{"id": "1", "query": "a", "relevant": ["1.(1)"], "urls": [], "split": "tune"},
             {"id": "2", "query": "b", "relevant": [], "urls": [], "split": "test", "context": "1.(1)"}]
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    assert [q.id for q in load_queries([f], split="test")] == ["2"]
    assert load_queries([f])[1].context == "1.(1)"
    f.write_text('{"id": "1", "query": "a"}\n', encoding="utf-8")
    with pytest.raises(MadoguchiError, match=r"q\.jsonl:1: not a query line"):
        load_queries([f])
