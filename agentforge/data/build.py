"""From the ``data`` config group to data: the training datamodule and the held-out evaluation sets.

``data.path`` (with ``data.format``) adds a local JSONL file in a public format to the training mix
under the task name ``file``; ``data.eval_paths`` replaces the synthetic held-out sets with local
files (keys ``gsm8k``, ``arc``, ``piqa``).
"""
from __future__ import annotations

from agentforge.data import formats, synthetic
from agentforge.data.datamodule import LMDataModule, TaskPool
from agentforge.data.tokenizer import ByteTokenizer

EVAL_FORMATS = ("gsm8k", "arc", "piqa")


def per_format(n: int | dict[str, int]) -> dict[str, int]:
    """Examples per eval format: ``n`` itself when a dict, else the same number for every format."""
    return n if isinstance(n, dict) else dict.fromkeys(EVAL_FORMATS, n)


def eval_sets(data_cfg: dict, seed: int, n: int | dict[str, int], split: str = "val") -> dict[str, list[dict]]:
    """Held-out records per format: synthetic by default, or the user's local files. ``n``: examples per
    format, one number for all or {"gsm8k": .., "arc": .., "piqa": ..}."""
    size = per_format(n)
    paths = data_cfg.get("eval_paths") or {}
    out = {"gsm8k": synthetic.generate("arithmetic", size["gsm8k"], seed, split),
           "arc": synthetic.generate("choice", size["arc"], seed, split),
           "piqa": synthetic.generate("piqa", size["piqa"], seed, split)}
    for fmt, path in paths.items():
        if path:
            out[fmt] = formats.load_jsonl(path, fmt, limit=size[fmt], key=f"data.eval_paths.{fmt}")
    return out


def build_datamodule(data_cfg: dict, tokenizer: ByteTokenizer, *, stages: list[dict], seed: int,
                     steps_per_epoch: int, val_rows: int, dataset_weights: dict | None = None) -> LMDataModule:
    if data_cfg.get("source") == "python_code":  # data=python_code: the decontaminated stdlib corpus, one task
        from agentforge.codegen.corpus import corpus_from_config
        from agentforge.codegen.training import code_datamodule

        return code_datamodule(corpus_from_config(data_cfg), data_cfg, seed=seed, steps_per_epoch=steps_per_epoch,
                               val_rows=val_rows, epochs=sum(int(st["epochs"]) for st in stages))
    extra, fmt = None, None
    if data_cfg.get("path"):
        fmt = data_cfg.get("format") or "gsm8k"
        extra = formats.load_jsonl(data_cfg["path"], fmt)
        stages = [dict(st, mix={**st["mix"], "file": float(data_cfg.get("file_weight", 1.0))}) for st in stages]
    return LMDataModule(tokenizer, stages, seq_len=int(data_cfg["seq_len"]), batch_size=int(data_cfg["batch_size"]),
                        steps_per_epoch=steps_per_epoch, val_rows=val_rows, seed=seed,
                        dataset_weights=dataset_weights, pool=TaskPool(seed, extra, fmt))
