"""Regex-guided decoding for the transformers backend ("structured outputs"): a logits processor that lets
a row continue only with tokens that keep its answer a prefix of some full match, and end only on a full
match, so a stage that asks for a structured answer always gets one that parses. vLLM (engine and server)
does the same natively; this is the CPU/test path. It relies on the `regex` package's partial matching
instead of a compiled token automaton: no extra dependency and no per-regex compile step, at the cost
of testing candidate tokens one by one (in logit order, stopping as soon as possible)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

import regex
import torch
from transformers import LogitsProcessor

log = logging.getLogger(__name__)

SAMPLE_TOP_K = 64
# Spaces, punctuation and digits next to words: enough to tell whether per-token texts concatenate to the
# decoded text (byte-level BPE: yes; SentencePiece word-start markers or space clean-up: no).
_PROBE = ' {"a b": [1, 23], "c": "x-y_z"} , it\'s done .\n'


class TokenTable:
    """What each vocabulary token adds to the answer text, computed once per tokenizer (one decode per
    token). Special tokens (dropped from answers), empty texts (no progress) and texts with U+FFFD
    (a partial UTF-8 character, only meaningful with its neighbours) are left out: they are never allowed.
    End-of-sequence ids are kept apart: they end an answer rather than extend it."""

    def __init__(self, tokenizer: Any, eos_token_ids: Iterable[int]) -> None:
        size = len(tokenizer)
        special = set(tokenizer.all_special_ids)
        special |= {index for index, token in tokenizer.added_tokens_decoder.items() if token.special}
        decoded = tokenizer.batch_decode([[index] for index in range(size)], skip_special_tokens=True)
        self.texts: list[str | None] = [
            None if index in special or not text or "\ufffd" in text else text
            for index, text in enumerate(decoded)
        ]
        self.eos = frozenset(eos_token_ids)
        if not self.eos:
            raise ValueError("guided decoding needs at least one end-of-sequence token id")
        ids = tokenizer.encode(_PROBE, add_special_tokens=False)
        joined = "".join(self.texts[index] or "" for index in ids)
        if joined != tokenizer.decode(ids, skip_special_tokens=True):
            raise ValueError(
                f"{type(tokenizer).__name__}: decoded tokens do not concatenate to the decoded text "
                f"({joined!r} vs {tokenizer.decode(ids, skip_special_tokens=True)!r}), so a regex cannot be "
                "checked token by token; guided decoding supports byte-level BPE tokenizers such as Qwen's"
            )

    def text(self, token_id: int) -> str | None:
        """The token's text, or None when it may never be generated under a regex."""
        return self.texts[token_id] if 0 <= token_id < len(self.texts) else None


class _Row:
    """One row's progress: tokens seen so far, their text, whether it has ended (EOS seen)."""

    __slots__ = ("finished", "length", "text")

    def __init__(self) -> None:
        self.length = 0
        self.text = ""
        self.finished = False


class RegexLogitsProcessor(LogitsProcessor):
    """Masks to -inf every token that would make a row's answer stop being a prefix of a full match of
    `pattern`; EOS is allowed only once the answer matches in full (so, when nothing can extend a full
    match, EOS is all that is left). Candidates are tested in descending logit order, and only as many as
    needed: the first allowed one under greedy decoding, the allowed ones among the top `top_k` when
    sampling (then temperature and top_p act on those), and when none of those is allowed, the best
    allowed token of the whole vocabulary. Rows that have ended are left alone.

    One processor serves one generate() call without beam search: rows keep their identity, and
    `prompt_length` (the same for all rows with left padding) is where each row's answer starts."""

    def __init__(
        self,
        pattern: str,
        table: TokenTable,
        prompt_length: int,
        sample: bool,
        top_k: int = SAMPLE_TOP_K,
    ) -> None:
        self.pattern = regex.compile(pattern)
        self.table = table
        self.prompt_length = prompt_length
        self.sample = sample
        self.top_k = top_k
        self._rows: dict[int, _Row] = {}
        self.dead_ends = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_length :].tolist()
        # Greedy decoding usually takes the model's favourite, so it is tried before any sorting.
        ranked: list[list[int]] = (
            self._top(scores).tolist() if self.sample else [[best] for best in scores.argmax(dim=-1).tolist()]
        )
        rows: list[int] = []
        cols: list[int] = []
        free: list[int] = []
        for index, ids in enumerate(generated):
            row = self._advance(index, ids)
            if row.finished:
                free.append(index)
                continue
            allowed = self._allowed(row.text, ranked[index], scores[index])
            rows += [index] * len(allowed)
            cols += allowed
        # One pass over the full scores (a fill), then the few kept entries copied back.
        out = torch.full_like(scores, float("-inf"))
        kept = (torch.tensor(rows, device=scores.device), torch.tensor(cols, device=scores.device))
        out[kept] = scores[kept]
        if free:
            out[free] = scores[free]
        return out

    def _top(self, scores: torch.Tensor) -> torch.Tensor:
        """The `top_k` highest-scoring token ids of each row (of a 2-D batch or a 1-D row), best first."""
        return scores.topk(min(self.top_k, scores.shape[-1]), dim=-1).indices

    def _advance(self, index: int, ids: list[int]) -> _Row:
        """The row's state after `ids`, extending its cached text by the new tokens only."""
        row = self._rows.get(index)
        if row is None or row.length > len(ids):
            row = self._rows[index] = _Row()
        for token_id in ids[row.length :]:
            if row.finished:
                break
            if token_id in self.table.eos:
                row.finished = True
            else:
                row.text += self.table.text(token_id) or ""
        row.length = len(ids)
        return row

    def _allowed(self, text: str, ranked: list[int], scores: torch.Tensor) -> list[int]:
        """Token ids this row may take next, tested in logit order and no further than needed: `ranked`
        is the row's best token (greedy) or its top k (sampling), `scores` the row's scores."""
        complete = self.pattern.fullmatch(text) is not None
        first_ok: dict[str, bool] = {}  # one regex test per distinct first character, not per token

        def ok(token_id: int) -> bool:
            if token_id in self.table.eos:
                return complete
            piece = self.table.text(token_id)
            if piece is None:
                return False
            head = piece[0]
            if head not in first_ok:
                first_ok[head] = self.pattern.fullmatch(text + head, partial=True) is not None
            if not first_ok[head]:
                return False
            return len(piece) == 1 or self.pattern.fullmatch(text + piece, partial=True) is not None

        if self.sample:
            allowed = [token_id for token_id in ranked if ok(token_id)]
            if allowed:
                return allowed
        elif ok(ranked[0]):
            return [ranked[0]]
        seen = set(ranked)
        if not self.sample:  # greedy: the rest of the top k, then everything
            for token_id in self._top(scores).tolist():
                if token_id not in seen and ok(token_id):
                    return [token_id]
                seen.add(token_id)
        for token_id in _descending(scores):
            if token_id not in seen and ok(token_id):
                return [token_id]
        # Nothing keeps the answer matchable (e.g. it needs a character no whole token spells): end the
        # row rather than leave no token at all; its answer will not match.
        self.dead_ends += 1
        log.warning("regex %r: no token can extend %r; ending the answer early", self.pattern.pattern, text)
        return sorted(self.table.eos)


def _descending(scores: torch.Tensor) -> Iterator[int]:
    """Every token id of one row, highest score first."""
    yield from torch.argsort(scores, descending=True).tolist()
