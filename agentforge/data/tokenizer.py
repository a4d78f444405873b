"""A byte-level tokenizer that needs no download, with room for special tokens.

Ids 0..255 are the UTF-8 bytes, then PAD, BOS, EOS, then the special tokens in the order added
(Phase 3 adds its 12 thinking/strategy tokens). The model's vocabulary is sized with
``RESERVED_VOCAB`` spare rows so the special tokens fit without resizing; beyond that Phase 3 grows
the embedding.
"""
from __future__ import annotations

import re

PAD_ID, BOS_ID, EOS_ID = 256, 257, 258
FIRST_SPECIAL_ID = 259
RESERVED_VOCAB = 272  # default model vocab: bytes + 3 control ids + 13 spare rows


class ByteTokenizer:
    pad_id, bos_id, eos_id = PAD_ID, BOS_ID, EOS_ID

    def __init__(self, special_tokens: list[str] | tuple[str, ...] = ()):
        self.special_tokens: list[str] = []
        self._pattern: re.Pattern | None = None
        self.add_special_tokens(special_tokens)

    @property
    def vocab_size(self) -> int:
        return FIRST_SPECIAL_ID + len(self.special_tokens)

    def add_special_tokens(self, tokens) -> list[int]:
        """Add tokens not yet known; return the ids of all the given tokens."""
        for tok in tokens:
            if not tok:
                raise ValueError("a special token cannot be empty")
            if tok not in self.special_tokens:
                self.special_tokens.append(tok)
        if self.special_tokens:
            alts = sorted(self.special_tokens, key=len, reverse=True)
            self._pattern = re.compile("(" + "|".join(re.escape(t) for t in alts) + ")")
        return [self.token_id(t) for t in tokens]

    def token_id(self, special: str) -> int:
        return FIRST_SPECIAL_ID + self.special_tokens.index(special)

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = [BOS_ID] if bos else []
        parts = self._pattern.split(text) if self._pattern else [text]
        for part in parts:
            if not part:
                continue
            if self._pattern and part in self.special_tokens:
                ids.append(self.token_id(part))
            else:
                ids.extend(part.encode("utf-8"))
        if eos:
            ids.append(EOS_ID)
        return ids

    def decode(self, ids, skip_control: bool = True) -> str:
        out, buf = [], bytearray()
        for i in (int(x) for x in ids):
            if i < 256:
                buf.append(i)
                continue
            out.append(buf.decode("utf-8", errors="replace"))
            buf = bytearray()
            if i >= FIRST_SPECIAL_ID and i - FIRST_SPECIAL_ID < len(self.special_tokens):
                out.append(self.special_tokens[i - FIRST_SPECIAL_ID])
            elif not skip_control:
                out.append({PAD_ID: "<pad>", BOS_ID: "<bos>", EOS_ID: "<eos>"}.get(i, f"<{i}>"))
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)

    def to_dict(self) -> dict:
        return {"type": "byte", "special_tokens": list(self.special_tokens)}

    @classmethod
    def from_dict(cls, d: dict | None) -> ByteTokenizer:
        d = {} if d is None else d
        if not isinstance(d, dict):
            raise ValueError(f"must be a mapping with type and special_tokens, got {type(d).__name__}")
        unknown = set(d) - {"type", "special_tokens"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}")
        if d.get("type", "byte") != "byte":
            raise ValueError(f"unsupported tokenizer type {d.get('type')!r} (only 'byte')")
        specials = d.get("special_tokens", [])
        if not isinstance(specials, list) or not all(isinstance(t, str) and t for t in specials):
            raise ValueError(f"special_tokens must be a list of non-empty strings, got {specials!r}")
        return cls(specials)
