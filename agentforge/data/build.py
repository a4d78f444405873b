"""From the ``data`` config group to data: the training datamodule and the held-out evaluation sets.

``data.path`` (with ``data.format``) adds a local JSONL file in a public format to the training mix
under the task name ``file``; ``data.eval_paths`` replaces the synthetic held-out sets with local
files (keys ``gsm8k``, ``arc``, ``piqa``).

Held out by content: the file's records are split by a hash of their content key (``synthetic.record_split``: the
whitespace-normalized, case- and punctuation-spacing-folded prompt; ~80 % train, 10 % val, 10 % test). Training samples its train records only; an
evaluation set of split S drops every record whose content key is one of ``data.path``'s records of another split —
so ``data=gsm8k``, which trains on and evaluates with the same GSM8K file, validates on that file's val records and
tests on its test records, never on a question it trained on (tests/test_data.py). An evaluation file is itself
split in two by the same hash (``synthetic.eval_file_split``: about half val, half test), so the val set that
chooses (EvoMerge's champion, BitNet's ship decision) and the test set that is reported share no question.
"""
from __future__ import annotations

from agentforge.data import formats, synthetic
from agentforge.data.datamodule import LMDataModule, TaskPool
from agentforge.data.tokenizer import ByteTokenizer
from agentforge.errors import ConfigError

EVAL_FORMATS = ("gsm8k", "arc", "piqa")


def per_format(n: int | dict[str, int]) -> dict[str, int]:
    """Examples per eval format: ``n`` itself when a dict, else the same number for every format."""
    return n if isinstance(n, dict) else dict.fromkeys(EVAL_FORMATS, n)


def eval_sets(data_cfg: dict, seed: int, n: int | dict[str, int], split: str = "val",
              key: str | dict[str, str] = "phase.eval_examples") -> dict[str, list[dict]]:
    """Held-out records per format: synthetic by default, or the user's local files. ``n``: examples per
    format, one number for all or {"gsm8k": .., "arc": .., "piqa": ..}; ``key``: the config key(s) that set it,
    named when a synthetic set has fewer distinct problems than asked for (``synthetic.generate``)."""
    size, keys = per_format(n), key if isinstance(key, dict) else dict.fromkeys(EVAL_FORMATS, key)
    paths = data_cfg.get("eval_paths") or {}
    out = {fmt: _synthetic(task, size[fmt], seed, split, keys[fmt])   # a format a file replaces is not drawn
           for fmt, task in (("gsm8k", "arithmetic"), ("arc", "choice"), ("piqa", "piqa")) if not paths.get(fmt)}
    other = training_file_prompts(data_cfg, split) if any(paths.values()) else set()
    for fmt, path in paths.items():
        if path:
            recs = formats.load_jsonl(path, fmt, key=f"data.eval_paths.{fmt}")
            kept = held_out(recs, fmt, other, split, f"data.eval_paths.{fmt}", path)
            if len(kept) < size[fmt]:   # a short file is scored, not refused (it may be all there is), but said so
                print(f"warning: data.eval_paths.{fmt}={path}: {len(kept)} distinct {split} records remain of its "
                      f"{len(recs)} (the file is split about half val, half test), fewer than "
                      f"{keys[fmt]}={size[fmt]}: {fmt} is scored on n={len(kept)}; give a larger file or lower "
                      f"{keys[fmt]}")
            out[fmt] = kept[:size[fmt]]
    return out


def _synthetic(task: str, n: int, seed: int, split: str, key: str) -> list[dict]:
    try:
        return synthetic.generate(task, n, seed, split)
    except ValueError as exc:
        raise ConfigError(f"{key}={n}: {exc}") from None


def held_out(recs: list[dict], fmt: str, other: set[str], split: str, key: str, source: str) -> list[dict]:
    """The records of an evaluation source (``key``: the config key that gave it) fit for ``split``: not one of
    ``other`` (``training_file_prompts``) and in ``split``'s half of the eval buckets
    (``synthetic.eval_file_split``), each question once (``distinct``)."""
    fresh = [r for r in recs if synthetic.record_key(fmt, r) not in other]
    if not fresh:
        raise formats.DatasetError(f"{key}: all {len(recs)} records of {source} are data.path records outside the "
                                   f"{split} split (trained on, or held out for another split); give a held-out file")
    kept = distinct([r for r in fresh if synthetic.eval_file_split(fmt, r) == split], fmt)
    if not kept:
        raise formats.DatasetError(f"{key}: none of the {len(fresh)} held-out records of {source} falls in the {split} "
                                   f"split (an evaluation file is split about half val, half test by a hash of each "
                                   f"prompt, so that selection and the reported test share no question); give a "
                                   f"larger file")
    return kept


def training_file_prompts(data_cfg: dict, split: str) -> set[str]:
    """The content keys (``synthetic.record_key``: normalized, folded prompts) of ``data.path``'s records that are
    not in ``split`` (empty without a data file): what an evaluation set of that split must not contain."""
    if not data_cfg.get("path") or data_cfg.get("source") == "python_code":
        return set()
    fmt = data_cfg.get("format") or "gsm8k"
    return {synthetic.record_key(fmt, r) for r in formats.load_jsonl(data_cfg["path"], fmt)
            if synthetic.record_split(fmt, r) != split}


def file_records_of_split(data_cfg: dict, split: str, limit: int | None = None) -> list[dict]:
    """``data.path``'s records of ``split`` (``phase=eval`` scores the file's test records: the rest trained the model
    or chose among its checkpoints)."""
    fmt = data_cfg.get("format") or "gsm8k"
    recs = [r for r in formats.load_jsonl(data_cfg["path"], fmt) if synthetic.record_split(fmt, r) == split]
    if not recs:
        raise formats.DatasetError(f"data.path: none of the records of {data_cfg['path']} falls in the {split} split "
                                   f"(~10 % of the records, by a hash of each prompt); give a larger file")
    recs = distinct(recs, fmt)
    return recs[:limit] if limit else recs


def distinct(recs: list[dict], fmt: str) -> list[dict]:
    """``recs`` less every record whose question (``synthetic.record_key``) an earlier one asked: an evaluation set
    counts each question once, so its n is the number of independent questions its CI assumes."""
    seen: set[str] = set()
    return [r for r in recs if not ((k := synthetic.record_key(fmt, r)) in seen or seen.add(k))]


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
