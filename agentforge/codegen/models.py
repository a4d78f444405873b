"""The models a code benchmark evaluates, behind one interface (``CodeLM``): a Cognate model and a
GPT-2-architecture baseline built with ``transformers`` (``GPT2LMHeadModel``).

* ``baseline=gpt2_scratch``: a GPT-2 config sized from the ``size`` group (``n_embd = d_model``, ``n_layer``,
  ``n_head``, ``n_positions = max_seq_len``; ``n_inner = 3/2 * ffn_hidden`` so its two-matrix GELU MLP has
  the weight-matrix parameters of Cognate's three-matrix SwiGLU, plus GPT-2's biases), the project's byte
  tokenizer, trained on the same rows, steps and batch as the model under test — a fair, offline comparison;
* ``baseline=gpt2``: the real GPT-2 124M weights and BPE tokenizer from the Hugging Face hub (needs the hub
  or its cache), evaluated as they are.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from agentforge.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, RESERVED_VOCAB, ByteTokenizer
from agentforge.errors import ConfigError
from agentforge.io import write_json_atomic


class GPT2ForLM(nn.Module):
    """``GPT2LMHeadModel`` with the project's training interface: ``forward(ids, targets)`` returns
    ``.logits`` and, with targets (already shifted), the mean next-token cross-entropy ``.loss``."""

    def __init__(self, hf_model):
        super().__init__()
        self.hf = hf_model
        self.config = SimpleNamespace(max_seq_len=int(hf_model.config.n_positions))

    def forward(self, ids: torch.Tensor, targets: torch.Tensor | None = None):
        logits = self.hf(input_ids=ids).logits
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        return SimpleNamespace(logits=logits, loss=loss)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def kv_decoder(self, batch: int):
        """Incremental decoding through transformers' own KV cache (``past_key_values``), the interface of
        ``models.generation``: ``next_logits(ids)`` feeds the ids not yet seen and returns the last logits."""
        state = {"past": None, "seen": 0}
        key = "cache" if "cache" in inspect.signature(self.hf.forward).parameters else "past_key_values"  # 5.x renames it

        def next_logits(ids: torch.Tensor) -> torch.Tensor:
            out = self.hf(input_ids=ids[:, state["seen"]:], use_cache=True, **{key: state["past"]})
            state["past"], state["seen"] = getattr(out, key), ids.shape[1]  # the output field is renamed too
            return out.logits[:, -1]
        return SimpleNamespace(next_logits=next_logits)


def gpt2_config(size: dict, baseline: dict, vocab_size: int = RESERVED_VOCAB):
    from transformers import GPT2Config

    n_inner = baseline.get("n_inner") or int(size["ffn_hidden"]) * 3 // 2
    drop = float(baseline.get("dropout", 0.0))
    return GPT2Config(vocab_size=vocab_size, n_positions=int(size["max_seq_len"]), n_embd=int(size["d_model"]),
                      n_layer=int(size["n_layers"]), n_head=int(size["n_heads"]), n_inner=int(n_inner),
                      resid_pdrop=drop, embd_pdrop=drop, attn_pdrop=drop, bos_token_id=BOS_ID,
                      eos_token_id=EOS_ID, pad_token_id=PAD_ID, tie_word_embeddings=True)


def gpt2_scratch(size: dict, baseline: dict, seed: int) -> GPT2ForLM:
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2ForLM(GPT2LMHeadModel(gpt2_config(size, baseline)))


@dataclass
class CodeLM:
    """A model and its tokenizer as the harness sees them."""
    name: str                         # cognate | gpt2_scratch | gpt2
    description: str                  # said in every output: which baseline was used
    model: nn.Module                  # forward(ids) -> .logits
    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]
    max_seq_len: int
    eos_id: int | None

    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def byte_lm(name: str, description: str, model: nn.Module, max_seq_len: int) -> CodeLM:
    tok = ByteTokenizer()
    return CodeLM(name, description, model, lambda s: tok.encode(s, bos=True), tok.decode, max_seq_len, EOS_ID)


def hub_unreachable(timeout: float = 5.0) -> str | None:
    """Why the Hugging Face hub (``HF_ENDPOINT``) cannot be reached, or None: ``HF_HUB_OFFLINE`` set, the host's
    name not resolving, its port refusing or silent for ``timeout`` s. One TCP connect, so that a machine without
    a network fails at once instead of through the hub client's five retries (~25 s of backoff)."""
    import socket
    from urllib.parse import urlparse

    import huggingface_hub.constants as hub

    if hub.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urlparse(hub.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as exc:
        return f"{url.hostname}:{port} unreachable: {exc.strerror or exc}"
    return None


def pretrained_gpt2(hub_id: str) -> CodeLM:
    """The real GPT-2 weights and tokenizer: from the local cache when it has them (no network touched), else from
    the hub; a clear error at once when neither can serve them."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    def load(local_only: bool):
        return (GPT2LMHeadModel.from_pretrained(hub_id, local_files_only=local_only),
                AutoTokenizer.from_pretrained(hub_id, local_files_only=local_only))

    try:
        hf, tok = load(local_only=True)
    except (OSError, ValueError):
        why = hub_unreachable()
        try:
            if why:
                raise OSError(why)
            hf, tok = load(local_only=False)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"baseline=gpt2: cannot load {hub_id!r}: not in the Hugging Face cache and not from "
                              f"the hub ({str(exc).splitlines()[0][:160] if why else type(exc).__name__}); use "
                              f"baseline=gpt2_scratch offline") from None
    model = GPT2ForLM(hf).eval()
    return CodeLM("gpt2", f"GPT-2 pretrained weights ({hub_id}, {model.num_params():,} params)", model,
                  lambda s: tok.encode(s), lambda ids: tok.decode(ids), int(hf.config.n_positions),
                  tok.eos_token_id)


def save_gpt2(model: GPT2ForLM, directory: Path, meta: dict) -> Path:
    """safetensors + config.json through transformers, plus our meta."""
    model.hf.save_pretrained(directory, safe_serialization=True)
    write_json_atomic(Path(directory) / "agentforge_meta.json", meta)
    return Path(directory)
