"""The inference-only program of the trusted re-scoring: the returned weights in, logits out.

    python infer.py        (run by ``agentforge.scaling.rescore`` in agentforge.sandbox, without agentforge/)

Its private dir holds only what building the model takes: ``candidate.py``, copies of
``agentforge/scaling/model.py`` and ``agentforge/models/layers.py`` (under empty package files, so the
imports below resolve to them), ``request.json`` (the sizes, vocabulary size, seed, threads and mode),
``rows.safetensors`` and one ``weights_<name>.safetensors`` per size — not the project's data code, its
tokenizer or any training text (the sandbox does not mount agentforge/). Per size it seeds torch as the
child did before building the model (so buffers the state dict does not hold come out the same), builds
``ScalingLM`` with the candidate's attention, loads the weights with ``strict=True`` and writes
``logits_<name>.safetensors``:

* mode ``batch``: ``last`` [N, vocab] — the last position of every row, in chunks of ``CHUNK`` rows as the
  child computes them — and ``probe`` [2P, T, vocab];
* mode ``spot``: no rows file; the rows come one at a time on the pipe ``request["stream"][0]`` (int64, the
  row's length ``request["row_len"]``), and each row's last-position logits (float32 [vocab]) go back on
  ``request["stream"][1]`` before the next row is sent (``rescore._stream``): each row alone, a batch of one,
  computed with only the rows before it seen.

The candidate's code runs in this process too, so nothing written here counts by itself: the parent
compares the two modes' logits with each other and with the child's.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

CHUNK = 512  # rows per forward pass: the child's split of the held-out rows


def main() -> int:
    request = json.loads(Path("request.json").read_text())
    import torch
    from safetensors.torch import load_file, save_file

    from agentforge.scaling.model import ScalingLM

    torch.set_num_threads(int(request["threads"]))
    spec = importlib.util.spec_from_file_location("scaling_candidate", "candidate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = load_file("rows.safetensors") if request["mode"] == "batch" else None
    for size in request["sizes"]:
        torch.manual_seed(int(request["seed"]))
        model = ScalingLM(int(request["vocab"]), int(size["d_model"]), int(size["n_layers"]), int(size["n_heads"]),
                          module.Attention)
        weights = load_file(f"weights_{size['name']}.safetensors")
        dtypes = {t.dtype for t in weights.values()}
        if len(dtypes) == 1:  # a model trained in half precision ran its forward pass in it
            model.to(dtypes.pop())
        model.load_state_dict(weights, strict=True)
        model.eval()
        with torch.no_grad():
            if request["mode"] == "batch":
                out = {"last": torch.cat([model(x).logits[:, -1, :].float() for x in rows["rows"].split(CHUNK)]),
                       "probe": model(rows["probe"]).logits.float()}
            else:
                stream(model, request)
                continue
        save_file({k: v.contiguous() for k, v in out.items()}, f"logits_{size['name']}.safetensors")
        print(f"size {size['name']}: {request['mode']} logits written", flush=True)
    return 0


def stream(model, request: dict) -> None:
    """Mode ``spot``: answer the rows read from the pipe one at a time, until the parent closes it. (Its read loop is
    ``rescore._read_exact``'s, written again: this program runs without the agentforge package.)"""
    import torch

    rows_in, logits_out = (int(fd) for fd in request["stream"])
    size = 8 * int(request["row_len"])
    while True:
        buf = b""
        while len(buf) < size:
            chunk = os.read(rows_in, size - len(buf))
            if not chunk:
                return
            buf += chunk
        row = torch.frombuffer(bytearray(buf), dtype=torch.int64)
        logits = model(row[None]).logits[0, -1, :].float().contiguous()
        view = memoryview(logits.numpy().tobytes())
        while view:
            view = view[os.write(logits_out, view):]


if __name__ == "__main__":
    sys.exit(main())
