"""Search: a question → ranked programmes, each with its best passage, or an abstention.

Both retrievers score every passage and profile unit: dense (cosine of the query's embedding)
and lexical (BM25 over MeCab terms). Unit scores become programme scores (a programme is as good
as its best unit; the passage shown is its best real passage), the two rankings are fused, and
the question bank (chatbot/bank.py) adds how close the question is to a labelled question of
each programme. Decisions are taken from signals measured on our own tuning queries
(chatbot/calibration/<model>.json, written by `python -m chatbot calibrate`):

- decision: a small logistic model over how peaked the dense scores are, how much of the
  question's vocabulary the corpus knows, the BM25 evidence and the nearest labelled questions
  estimates P(in scope); two calibrated cuts make it "answer" (confident), "suggest" (the
  nearest programmes as choices, staff can help) or "none" (clearly outside the chapter);
- ambiguous: the first two programmes are closer than a margin;
- follow-up: with the programme the conversation is on (`context`), the answer stays on it
  unless the question, read alone, confidently names another programme.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from chatbot import aliases, bank, config, readings, text
from chatbot.errors import QueryError

MAX_QUERY_CHARS = 1000
METHODS = config.METHODS
DECISIONS = ("answer", "suggest", "none")
SAME_QUESTION = 0.98  # cosine from which a bank question is the question asked (a staff correction wins)
GENERIC_SHARE = 0.1  # a term in this share of the passages names no programme (see _names_topic)
DENSE_CANDIDATES = 1_000  # nearest passages asked of an approximate (HNSW) index; see Searcher._dense
CALIBRATION = Path(__file__).with_name("calibration")  # <model slug>.json and .npz per model


def calibration_files(model_id: str) -> tuple[Path, Path]:
    slug = config.slug(model_id)
    return CALIBRATION / f"{slug}.json", CALIBRATION / f"{slug}.npz"


@dataclass
class Settings:
    """Search parameters; the calibrated ones come from calibration.json for the model."""

    fusion: str = "rrf"  # "rrf" or "score" (min-max normalised, weighted)
    rrf_k: float = 60.0
    dense_weight: float = 0.5  # for fusion="score"
    abstain_weights: tuple[float, ...] = (0.0,) * 8  # see Searcher._features
    abstain_bias: float = 1.0
    abstain_threshold: float = 0.5  # below: decision "none"
    answer_threshold: float = 0.5  # from here: decision "answer"; in between: "suggest"
    bank_weight: float = 0.0  # how much a close labelled question adds to its programme's score
    bank_floor: float = 0.85  # the cosine under which a labelled question says nothing
    ambiguity_margin: float = 0.1  # relative gap of the fused scores of the first two
    switch_margin: float = 0.0  # how far ahead of the context another programme must be
    switch_confidence: float = 0.5  # how sure, read alone, a question must be to leave the context

    @classmethod
    def for_model(cls, model_id: str) -> "Settings":
        path = calibration_files(model_id)[0]
        if not path.exists():
            return cls()
        saved = json.loads(path.read_text(encoding="utf-8"))
        known = {k: (tuple(v) if isinstance(v, list) else v) for k, v in saved.items()
                 if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class Examples:
    """Labelled tuning questions (vectors of the model in use) for the abstention's kNN margin."""

    vectors: np.ndarray  # (n, dim), L2-normalised
    in_scope: np.ndarray  # (n,) bool

    @classmethod
    def for_model(cls, model_id: str) -> "Examples | None":
        path = calibration_files(model_id)[1]
        if not path.exists():
            return None
        with np.load(path) as saved:
            return cls(saved["vectors"].astype(np.float32), saved["in_scope"].astype(bool))

    def margin(self, vector: np.ndarray, exclude: int | None = None, nearest_bank: float = -1.0) -> float:
        """Nearest out-of-scope example's cosine minus nearest in-scope example's (the bank's
        labelled questions are in-scope examples too: `nearest_bank` is the closest one's)."""
        sims = self.vectors @ vector
        if exclude is not None:
            sims = sims.copy()
            sims[exclude] = -np.inf  # leave one out while calibrating
        return float(sims[~self.in_scope].max() - max(sims[self.in_scope].max(), nearest_bank))


@dataclass
class Result:
    key: str
    title: str
    section: str
    subitem: str
    breadcrumb: str
    text: str
    urls: list[str]
    score: float
    passage: int

    def to_json(self) -> dict:
        return {"key": self.key, "title": self.title, "section": self.section, "text": self.text,
                "urls": self.urls, "score": round(float(self.score), 4), "subitem": self.subitem,
                "breadcrumb": self.breadcrumb}


@dataclass
class Answer:
    query: str
    abstained: bool  # exactly when decision == "none"
    ambiguous: bool
    results: list[Result]
    decision: str = "none"  # "answer", "suggest" or "none" (see DECISIONS)
    message: str = ""  # why there is no result (empty or too long a question)
    context: str = ""  # the context programme the answer stayed on, if it did
    confidence: float = 0.0  # the abstention model's probability that the question is in scope
    elapsed_ms: float = 0.0
    error: str = ""  # why the question could not be searched as asked (a bad context or top_k)
    ranking: "Ranking | None" = field(default=None, repr=False)  # every programme's score (staff view)

    @classmethod
    def refused(cls, query: str, error: str) -> "Answer":
        """The answer to a request that cannot be searched: the same shape, with `error`."""
        return cls(text.scrub(query)[:MAX_QUERY_CHARS], True, False, [], error=error)

    def to_json(self) -> dict:
        """The contract of `ask --json` and the desk's /search (JSON-native types throughout)."""
        out = {"query": self.query, "abstained": bool(self.abstained), "ambiguous": bool(self.ambiguous),
               "decision": self.decision, "results": [r.to_json() for r in self.results],
               "confidence": round(float(self.confidence), 4), "followed_context": bool(self.context)}
        if self.message:
            out["message"] = self.message
        if self.error:
            out["error"] = self.error
        return out


@dataclass
class Ranking:
    """Programme-level scores of one question, before any decision."""

    keys: list[str]  # programme keys in corpus order
    fused: np.ndarray  # per programme
    dense: np.ndarray
    lexical: np.ndarray
    bank: np.ndarray  # per programme: cosine of its nearest labelled question (-1 without)
    best: np.ndarray  # per programme: index of its best real passage (the one shown)
    features: np.ndarray  # abstention features
    covered: float = 0.0  # share of the question's terms in the best BM25 passage (any script)
    terms: list[str] = field(default_factory=list)  # the question's BM25 terms, typos corrected
    order: np.ndarray = field(default=None)  # programme indices, best first

    def __post_init__(self):
        # Deterministic: ties break by corpus order (stable sort on the negated score).
        self.order = np.argsort(-self.fused, kind="stable")


class Searcher:
    """The engine over one index. `bank_file`: the staff's question bank (chatbot/bank.py), read
    again whenever it changes; `use_bank=False` leaves the bank out entirely (corpus asks too),
    for evaluating what it adds.

    `search` may run in several threads at once: after construction everything here is only read
    (FAISS, BM25 and ONNX Runtime sessions allow concurrent reads; MeCab parses under a lock,
    chatbot.text.mecab), except the bank, which one thread reloads under a lock."""

    def __init__(self, index, encoder, settings: Settings | None = None, *, bank_file: Path | None = None,
                 use_bank: bool = True, bank_cache: Path | None = None):
        self.index = index
        self.encoder = encoder
        self.settings = settings or Settings.for_model(index.model_id)
        if settings is None and not calibration_files(index.model_id)[0].exists():
            warnings.warn(f"no calibration for model {index.model_id!r}: the search will never abstain; "
                          "run `python -m chatbot calibrate`", stacklevel=2)
        items = index.passages
        self.keys = list(dict.fromkeys(p.key for p in items))
        self.slot = {key: i for i, key in enumerate(self.keys)}
        self.owner = np.array([self.slot[p.key] for p in items])
        self.shown = np.array([not p.profile for p in items])  # profile units are never shown
        self.vocab = index.bm25.vocab_dict
        self.readings = readings.Readings(self.vocab)
        self.aliases = aliases.learn(items)
        self.examples = Examples.for_model(index.model_id)
        self._all = len(items)
        # Per-term IDF and each passage's term set, for the abstention's coverage feature.
        self.passage_terms = [set(text.tokens(p.indexed)) for p in items]
        df: dict[str, int] = {}
        for terms in self.passage_terms:
            for t in terms:
                df[t] = df.get(t, 0) + 1
        self.idf = {t: math.log((self._all + 1) / (n + 0.5)) for t, n in df.items()}
        self.idf_unknown = math.log((self._all + 1) / 0.5)
        self.generic_idf = math.log((self._all + 1) / (GENERIC_SHARE * self._all + 0.5))  # see _names_topic
        self.use_bank, self.bank_file = use_bank, Path(bank_file) if bank_file else None
        if bank_cache is None and self.bank_file is not None:
            bank_cache = config.bank_cache(index.model_id)
        self._bank_vectors = bank.Vectors(encoder, bank_cache)
        self._reloading = threading.Lock()
        self.bank = self._load_bank()

    # -- public ---------------------------------------------------------------------------
    def search(self, query: str, *, top_k: int = config.TOP_K, context: str | None = None,
               method: str = METHODS[0], audience: str | None = None) -> Answer:
        started = time.perf_counter()
        if method not in METHODS:
            raise QueryError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        if context and context not in self.slot:
            raise QueryError(f"unknown programme key {context[:20]!r} for --context; see `python -m chatbot list`")
        if not 1 <= top_k <= 50:
            raise QueryError(f"top_k must be between 1 and 50, got {top_k}")
        query = text.scrub(query)  # echoed back in JSON, so it must encode
        clean = text.normalise(query)
        if not clean:
            return self._empty(query, "質問を入力してください。", started)
        if len(clean) > MAX_QUERY_CHARS:
            return self._empty(query, f"質問が長すぎます（{len(clean)}文字）。{MAX_QUERY_CHARS}文字以内でお願いします。", started)

        if self.use_bank and bank.stamp(self.bank_file) != self.bank.stamp:
            self._reload_bank()  # staff added a question: it counts from this one on
        ranking = self.rank(clean, method)
        s = self.settings
        confidence = _sigmoid(float(np.dot(s.abstain_weights, ranking.features)) + s.abstain_bias)
        decision = self.decide(confidence) if method == "hybrid" else "answer"
        abstained = decision == "none"
        order = list(ranking.order)
        stayed = ""
        if context:
            ctx = self.slot[context]
            # Leave the programme under discussion only for a question that, read alone, is
            # confidently about another one (an "answer", not a "suggest") and does not point
            # back (その制度, それ, it).
            leaves = (decision == "answer" and confidence >= s.switch_confidence and order[0] != ctx
                      and ranking.fused[order[0]] - ranking.fused[ctx] > s.switch_margin * ranking.fused[order[0]]
                      and self._names_topic(ranking.terms)
                      and (text.changes_topic(clean) or not text.refers_back(clean)))
            # A question that reads as out of scope alone ("支援期間は？", "どれくらい安くなるの？",
            # "Do you have the link?") is a follow-up, unless it sits nearer the off-topic
            # examples and shares no term with any passage ("今日の天気は？").
            off_topic = (abstained and ranking.features[5] > 0 and ranking.covered == 0
                         and not text.refers_back(clean) and not text.asks_for_link(clean))
            if not leaves and not off_topic:
                order = [ctx] + [i for i in order if i != ctx]
                decision, abstained, stayed = "answer", False, context
        if audience:
            allowed = {p.key for p in self.index.passages if audience in self._audience(p.key)}
            order = [i for i in order if self.keys[i] in allowed] or order
        top = order[:top_k]
        ambiguous = (not abstained and not stayed and len(top) > 1
                     and ranking.fused[top[1]] >= (1 - s.ambiguity_margin) * ranking.fused[top[0]])
        results = [] if abstained else [self._result(i, ranking) for i in top]
        return Answer(query, bool(abstained), bool(ambiguous), results, decision, context=stayed,
                      confidence=confidence, elapsed_ms=(time.perf_counter() - started) * 1000, ranking=ranking)

    def ranked(self, answer: Answer, top_k: int = 10) -> list[Result]:
        """The first `top_k` programmes of the answer's ranking, also when it abstained (staff view)."""
        ranking = answer.ranking
        return [] if ranking is None else [self._result(i, ranking) for i in ranking.order[:top_k]]

    def decide(self, confidence: float) -> str:
        s = self.settings
        if confidence < s.abstain_threshold:
            return "none"
        return "answer" if confidence >= s.answer_threshold else "suggest"

    def rank(self, clean: str, method: str = METHODS[0], exclude: int | None = None) -> Ranking:
        """Score every programme for a normalised question (`exclude`: an example to leave out)."""
        expanded = aliases.expand(clean, self.aliases)
        terms = self.readings.correct(text.tokens(expanded))
        lexical_p = self._bm25(terms)
        dense_p, vector = self._dense(expanded)
        dense = _per_programme(dense_p, self.owner, len(self.keys), floor=-1.0)
        lexical = _per_programme(lexical_p, self.owner, len(self.keys), floor=0.0)
        if method == "dense":
            fused_p = dense_p
        elif method == "bm25":
            fused_p = lexical_p + 1e-6 * dense_p  # dense only breaks BM25's ties (e.g. all zero)
        else:
            fused_p = self._fuse(dense_p, lexical_p, 1.0 - latin_share(clean))
        fused = _per_programme(fused_p, self.owner, len(self.keys), floor=-np.inf)
        _, best = _per_programme(np.where(self.shown, fused_p, -np.inf), self.owner, len(self.keys),
                                 floor=-np.inf, argmax=True)
        near, relabelled = self.bank.nearest(vector, len(self.keys), SAME_QUESTION)
        if method == "hybrid" and self.settings.bank_weight:
            fused = fused + self.settings.bank_weight * _bank_score(near, self.settings.bank_floor)
        if method == "hybrid":  # a question staff labelled, asked again: their label comes first
            fused = fused + relabelled
        covered = self._covered(terms, lexical_p)
        features = self._features(clean, dense, lexical_p, covered, vector, exclude, float(near.max()))
        return Ranking(self.keys, fused, dense, lexical, near, best, features, covered, terms)

    # -- parts ------------------------------------------------------------------------------
    def _dense(self, clean: str) -> tuple[np.ndarray, np.ndarray]:
        """Cosine of the question with every passage, and the question's vector.

        A graph index (HNSW, above index.APPROX_ABOVE passages) is asked for its nearest
        DENSE_CANDIDATES only: asked for all n it builds an n-sized result and still reaches only
        part of the graph. Passages it does not return score as the farthest one it did, so the
        min-max fusion sees about the spread a flat index gives."""
        q = self.encoder.encode_queries([clean]).astype(np.float32)
        k = min(self._all, DENSE_CANDIDATES) if hasattr(self.index.dense, "hnsw") else self._all
        scores, ids = self.index.dense.search(q, k)
        valid = ids[0] >= 0
        out = np.full(self._all, scores[0][valid].min() if valid.any() else -1.0, dtype=np.float32)
        out[ids[0][valid]] = scores[0][valid]
        return out, q[0]


    def _bm25(self, terms: list[str]) -> np.ndarray:
        known = [t for t in terms if t in self.vocab]
        if not known:
            return np.zeros(self._all, dtype=np.float32)
        return np.asarray(self.index.bm25.get_scores(known), dtype=np.float32)

    def _fuse(self, dense: np.ndarray, lexical: np.ndarray, japanese: float) -> np.ndarray:
        """Fused passage scores. BM25 over a Japanese corpus says little about an English
        question (its few Latin matches are noise once min-max scaled), so the lexical weight
        shrinks with the share of Latin letters in the question."""
        s = self.settings
        if s.fusion == "rrf":
            return _rrf(dense, s.rrf_k) + (japanese * _rrf(lexical, s.rrf_k) if lexical.max() > 0 else 0.0)
        lexical_weight = (1 - s.dense_weight) * japanese
        return (1 - lexical_weight) * _minmax(dense) + lexical_weight * _minmax(lexical)

    def _names_topic(self, terms: list[str]) -> bool:
        """Does the question name something of its own? Terms found in at least GENERIC_SHARE
        of the passages (大学, 対象, 中小企業) and terms the corpus lacks do not: 「大学でも対象
        になりますか」 in a conversation asks about the programme under discussion."""
        return any(self.idf[t] > self.generic_idf for t in terms if t in self.idf)

    def _covered(self, terms: list[str], lexical_p: np.ndarray) -> float:
        """The share of the question's information (IDF-weighted terms) that the best BM25
        passage contains; terms unknown to the corpus weigh the most."""
        content = list(dict.fromkeys(t for t in terms if not t.isdigit()))
        if not content or lexical_p.max() <= 0:
            return 0.0
        best = int(np.argmax(lexical_p))
        weights = np.array([self.idf.get(t, self.idf_unknown) for t in content])
        inside = np.array([t in self.passage_terms[best] for t in content])
        return float(weights[inside].sum() / weights.sum())

    def _features(self, clean: str, dense: np.ndarray, lexical_p: np.ndarray, covered: float,
                  vector: np.ndarray, exclude: int | None, nearest_bank: float) -> np.ndarray:
        """Abstention features, each a way of asking "does some programme really answer this?".

        0 the best dense cosine; 1 how far it stands above the field (z-score over programmes);
        2 the share of the question's information covered by the best BM25 passage (_covered);
        3 log(1 + BM25 max);
        4 the share of Latin letters in the question;
        5 how much nearer the question is to a labelled out-of-scope tuning question than to
        an in-scope one (0 before calibration has labelled any); the bank's questions count as
        in-scope examples;
        6, 7 are 2 and 3 for English. An English question's BM25 evidence comes only from the
        profiles' English terms and the link titles, a different scale from Japanese text:
        2 and 3 are scaled by the Japanese share (1 - 4), 6 and 7 by the Latin share (4), so
        the model weighs each language's lexical evidence on its own (10-fold CV on the tune
        questions: English in-scope sent away 1.9 → 0.1 of 46, the Japanese unchanged within 1).
        """
        ranked = np.sort(dense)[::-1]
        peak = (ranked[0] - ranked.mean()) / (ranked.std() + 1e-6)
        latin = latin_share(clean)
        japanese = 1.0 - latin
        knn = self.examples.margin(vector, exclude, nearest_bank) if self.examples is not None else 0.0
        strength = math.log1p(float(lexical_p.max()))
        return np.array([ranked[0], peak, covered * japanese, strength * japanese, latin, knn,
                         covered * latin, strength * latin], dtype=np.float64)

    def _reload_bank(self) -> None:
        with self._reloading:  # searches run in parallel: one reloads, the others find it done
            if bank.stamp(self.bank_file) == self.bank.stamp:
                return
            try:
                self.bank = self._load_bank()
            except bank.BankError as e:  # a hand-edited bank with a bad line must not stop the desk
                print(f"madoguchi: the question bank was not reloaded: {e}", file=sys.stderr, flush=True)
                self.bank.stamp = bank.stamp(self.bank_file)  # say it once, keep the bank that worked

    def _load_bank(self) -> bank.Loaded:
        """The corpus asks (embedded with the index) and the bank file (embedded here, cached)."""
        stamp = bank.stamp(self.bank_file)
        if not self.use_bank:
            return bank.Loaded([], np.zeros(0, dtype=np.int64), np.zeros((0, 1), dtype=np.float32), stamp)
        known = set(self.slot)
        extra = bank.read(self.bank_file, known) if self.bank_file else []
        entries = list(self.index.asks) + extra
        vectors = np.concatenate([self.index.ask_vectors, self._bank_vectors.of([e.question for e in extra])])
        slots = np.array([self.slot[e.key] for e in entries], dtype=np.int64)
        return bank.Loaded(entries, slots, vectors.astype(np.float32), stamp)

    def _audience(self, key: str) -> list[str]:
        return self.index.manifest.get("audience", {}).get(key, [])

    def _result(self, i: int, ranking: Ranking) -> Result:
        p = self.index.passages[int(ranking.best[i])]
        return Result(p.key, p.title, p.section, p.subitem, p.breadcrumb, p.text, list(p.urls),
                      float(ranking.fused[i]), p.id)

    def _empty(self, query: str, message: str, started: float) -> Answer:
        return Answer(query[:MAX_QUERY_CHARS], True, False, [], message=message,  # a huge input is not echoed whole
                      elapsed_ms=(time.perf_counter() - started) * 1000)


def latin_share(clean: str) -> float:
    """The share of Latin letters among the letters of a question (1.0 for English)."""
    letters = [c for c in clean if c.isalpha()]
    return sum(c.isascii() for c in letters) / len(letters) if letters else 0.0


def _per_programme(scores: np.ndarray, owner: np.ndarray, n: int, floor: float, argmax: bool = False):
    """Max over each programme's passages (and, with argmax, which passage: the first of equals)."""
    best = np.full(n, floor, dtype=np.float64)
    np.maximum.at(best, owner, scores.astype(np.float64))
    if not argmax:
        return best
    winners = np.flatnonzero(scores.astype(np.float64) == best[owner])[::-1]
    best_id = np.zeros(n, dtype=np.int64)
    best_id[owner[winners]] = winners  # assigned last-to-first, so the earliest passage stays
    return best, best_id


def _bank_score(nearest: np.ndarray, floor: float) -> np.ndarray:
    """A labelled question's cosine rescaled: 0 at the floor or below, 1 for the same question."""
    return np.clip((nearest - floor) / (1.0 - floor), 0.0, 1.0)


def _rrf(scores: np.ndarray, k: float) -> np.ndarray:
    """Reciprocal rank fusion term 1/(k + rank) (Cormack et al., SIGIR 2009); stable ranks."""
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[np.argsort(-scores, kind="stable")] = np.arange(1, len(scores) + 1)
    return 1.0 / (k + ranks)


def _minmax(scores: np.ndarray) -> np.ndarray:
    lo, hi = float(scores.min()), float(scores.max())
    return (scores - lo) / (hi - lo) if hi > lo else np.zeros_like(scores, dtype=np.float64)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def open_searcher(*, build_if_stale: bool = False, threads: int = 0, use_bank: bool = True) -> Searcher:
    """The engine over the configured index (chatbot.config), for the CLI and the desk alike.

    A missing or stale index is an IndexStateError saying what to run, or, with `build_if_stale`
    (the desk), is built first with progress on stderr. `threads`: the encoder's threads per
    question (embed.load_encoder)."""
    from chatbot import embed, index
    from chatbot.errors import IndexStateError

    encoder = embed.load_encoder(config.model_name(), threads=threads)
    try:
        built = index.load(config.index_dir(), corpus_dir=config.corpus_dir(), model_id=encoder.model_id)
    except IndexStateError as e:
        if not build_if_stale:
            raise
        print(f"madoguchi: {e}\nmadoguchi: building the index in {config.index_dir()} (about half a minute)…",
              file=sys.stderr, flush=True)
        builder = embed.load_encoder(config.model_name(), runtime="sentence-transformers")
        # reuse_current: a desk started alongside may have built it while this one waited for the lock
        built = index.build(config.corpus_dir(), config.index_dir(), builder, progress=True, reuse_current=True)
    return Searcher(built, encoder, bank_file=config.bank_file(), use_bank=use_bank)
