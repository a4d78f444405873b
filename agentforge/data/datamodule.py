"""Packed language-modelling batches over a task mix, with a curriculum the trainer can advance.

Examples are rendered to text (``formats.render``), encoded with BOS/EOS, concatenated and cut into
rows of ``seq_len + 1`` tokens; a row gives inputs ``row[:-1]`` and shifted targets ``row[1:]``.
The training rows are redrawn each epoch from the current stage's mix (Lightning reloads the
dataloader every epoch), deterministically from (seed, epoch).

Under DDP (``hardware=ddp``, W processes) every rank still takes ``batch_size`` rows per step and
``steps_per_epoch`` optimizer steps per epoch: an epoch draws ``steps_per_epoch x batch_size x W`` rows, which
the distributed sampler splits across the ranks, so the effective batch of one optimizer step (gradients
all-reduced) is ``batch_size x W`` rows, and the step count, hence the LR schedule, is that of one process.
The validation rows are split without padding (``ShardSampler``: rank r scores ``rows[r::W]``, each row once);
``LMModule`` sums the loss and token count over the ranks, so every rank sees the whole set's loss.
"""
from __future__ import annotations

import random
from collections.abc import Mapping

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from agentforge.data import formats, synthetic
from agentforge.data.tokenizer import ByteTokenizer


def normalize_mix(mix: Mapping[str, float], weights: Mapping[str, float] | None = None) -> dict[str, float]:
    """Stage mix times the model's dataset weights, normalized to sum to 1 (zero-weight tasks dropped)."""
    out = {t: float(w) * float((weights or {}).get(t, 1.0)) for t, w in mix.items()}
    out = {t: w for t, w in out.items() if w > 0}
    total = sum(out.values())
    if total <= 0:
        raise ValueError(f"task mix {dict(mix)} has no positive weight")
    return {t: w / total for t, w in out.items()}


def pack(texts: list[str], tokenizer: ByteTokenizer, seq_len: int) -> torch.Tensor:
    """Concatenate the encoded texts and cut into [N, seq_len + 1] rows (the tail is dropped)."""
    stream: list[int] = []
    for t in texts:
        stream.extend(tokenizer.encode(t, bos=True, eos=True))
    n = len(stream) // (seq_len + 1)
    if n == 0:
        raise ValueError(f"not enough text for one row of {seq_len + 1} tokens")
    return torch.tensor(stream[: n * (seq_len + 1)], dtype=torch.long).view(n, seq_len + 1)


def pack_documents(texts: list[str], tokenizer: ByteTokenizer, seq_len: int) -> torch.Tensor:
    """Rows [N, seq_len + 1] for held-out measurements in which no document spans two rows: each row starts at a
    document's BOS and takes whole documents while they fit; the document that crosses the row's end is cut there
    and the rest of it dropped (a document longer than a row gives the row its first seq_len + 1 tokens); the tail
    that does not fill a last row is dropped. ``pack`` continues a cut document in the next row instead, so
    neighbouring rows share a document and a CI that resamples rows counts it twice as independent evidence (an
    audit on 2026-11-27: the Cognate phase's 32 validation rows held 26 documents, 31 rows starting mid-document).
    With distinct documents (``TaskPool.sample_texts(distinct=True)``) the rows are independent draws."""
    width, rows, row = seq_len + 1, [], []
    for t in texts:
        ids = tokenizer.encode(t, bos=True, eos=True)
        row.extend(ids[: width - len(row)])
        if len(row) == width:
            rows.append(row)
            row = []
    if not rows:
        raise ValueError(f"not enough text for one row of {width} tokens")
    return torch.tensor(rows, dtype=torch.long)


def heldout_rows(pool: "TaskPool", mix: Mapping[str, float], n_rows: int, seq_len: int, tokenizer: ByteTokenizer,
                 rng: random.Random, split: str) -> torch.Tensor:
    """``n_rows`` held-out rows [n_rows, seq_len + 1] of ``split`` examples of the task ``mix``: distinct documents
    (by content key), packed so that no document spans two rows (``pack_documents``), so the rows are the
    independent units the phases' paired tests and CIs resample. Every row takes at least one document and the cut
    documents' tails are dropped, so the draw starts at three times the rows' tokens and doubles, continuing the
    same draws, until the rows are there; too few distinct documents in the split is a ValueError naming the
    count. Rows of distinct documents can still be equal at short lengths (templated problems share their first
    bytes: 64 rows of 16-token choice questions hold 1 distinct row); EvoMerge's test figure, whose paired tests
    resample the rows, drops such repeats (``merge.heldout.disjoint_from``)."""
    start, budget = rng.getstate(), 3 * (n_rows + 2) * (seq_len + 1)
    while True:
        rng.setstate(start)   # a longer draw repeats the shorter one's first draws: the rows only grow
        texts = pool.sample_texts(mix, budget, rng, split, distinct=True)
        rows = pack_documents(texts, tokenizer, seq_len)
        if len(rows) >= n_rows or sum(len(t.encode("utf-8")) + 2 for t in texts) < budget:   # enough, or none left
            break
        budget *= 2
    if len(rows) < n_rows:
        raise ValueError(f"only {len(rows)} rows of distinct {split}-split documents for the task mix {sorted(mix)}, "
                         f"{n_rows} asked")
    return rows[:n_rows]


class TaskPool:
    """Examples per task: synthetic generators, plus records of a user's local file when given. The file's records
    are split by the hash of their content key (``synthetic.record_split``), like the synthetic examples: the
    "train" split samples only the train records, "val" only the val records, so validation never sees a training
    question; a split with no records of the file (a tiny file) leaves the file out of that split's mix."""

    def __init__(self, seed: int, extra_records: list[dict] | None = None, extra_format: str | None = None):
        self.seed = seed
        self.extra_records, self.extra_format = extra_records or [], extra_format
        self.by_split: dict[str, list[dict]] = {sp: [] for sp in synthetic.SPLITS}
        for rec in self.extra_records:
            self.by_split[synthetic.record_split(extra_format, rec)].append(rec)

    def sample_texts(self, mix: Mapping[str, float], n_tokens: int, rng: random.Random, split: str,
                     distinct: bool = False) -> list[str]:
        """Rendered examples of ``split`` drawn from the task ``mix`` until ``n_tokens`` bytes (+ BOS/EOS each).
        ``distinct``: each problem at most once (``synthetic.content_key``, a file's ``record_key``), for held-out
        rows whose documents must be independent; it stops early when the split has no new problem left (1 000
        draws in a row repeat one already drawn), and the caller counts what it got."""
        if "file" in mix and not self.by_split.get(split):
            mix = {t: w for t, w in mix.items() if t != "file"}
            if not mix:
                raise formats.DatasetError(f"data.path: none of the file's {len(self.extra_records)} records falls in "
                                           f"the {split} split (split by a hash of each prompt: ~10 % val, ~10 % "
                                           f"test); give a larger file or add synthetic tasks to the mix")
        tasks, probs = list(mix), list(mix.values())
        texts, total, seen, repeats = [], 0, set(), 0
        while total < n_tokens and repeats < 1000:
            task = rng.choices(tasks, probs)[0]
            if task == "file":
                rec = rng.choice(self.by_split[split])
                text = formats.render(rec, self.extra_format)
                key = ("file", synthetic.record_key(self.extra_format, rec))
            else:
                rec = synthetic.GENERATORS[task](self.seed, split, rng.randrange(10**9))
                text = formats.render(rec, formats.TASK_FORMAT[task])
                key = (task, synthetic.content_key(task, rec))
            if distinct:
                if key in seen:
                    repeats += 1
                    continue
                seen.add(key)
                repeats = 0
            texts.append(text)
            total += len(text.encode("utf-8")) + 2
        return texts


def ranks_of(trainer) -> tuple[int, int]:
    """(world size, global rank) of a Trainer's run; (1, 0) without one."""
    if trainer is None:
        return 1, 0
    return int(trainer.world_size), int(trainer.global_rank)


class ShardSampler(DistributedSampler):
    """Evaluation rows split across DDP ranks without padding: rank r of W takes ``rows[r::W]``, so every row is
    scored exactly once (Lightning's own ``DistributedSampler`` pads the shards to equal length by repeating
    rows, and it is left alone because this is one). With fewer rows than ranks every rank takes all of them
    (no rank is left without a batch, which would skip its validation and the loss reduction); a mean of sums
    over the ranks is then the same mean. Deterministic: no shuffling, ``set_epoch`` changes nothing."""

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)

    def indices(self) -> list[int]:
        n = len(self.dataset)
        return list(range(n)) if n < self.num_replicas else list(range(self.rank, n, self.num_replicas))

    def __iter__(self):
        return iter(self.indices())

    def __len__(self) -> int:
        return len(self.indices())


class LMDataModule(L.LightningDataModule):
    def __init__(self, tokenizer: ByteTokenizer, stages: list[dict], seq_len: int, batch_size: int,
                 steps_per_epoch: int, val_rows: int, seed: int, dataset_weights: Mapping[str, float] | None = None,
                 pool: TaskPool | None = None):
        super().__init__()
        self.tokenizer, self.stages, self.seq_len = tokenizer, stages, seq_len
        self.batch_size, self.steps_per_epoch, self.val_rows = batch_size, steps_per_epoch, val_rows
        self.seed, self.dataset_weights = seed, dict(dataset_weights or {})
        self.pool = pool or TaskPool(seed)
        self.epoch = 0
        self._val: torch.Tensor | None = None

    # -- curriculum -------------------------------------------------------------------------------------
    def stage_of_epoch(self, epoch: int) -> int:
        """1-based curriculum stage for a 0-based epoch; the last stage lasts until training ends."""
        end = 0
        for i, st in enumerate(self.stages, 1):
            end += int(st["epochs"])
            if epoch < end:
                return i
        return len(self.stages)

    def mix_of_stage(self, stage: int) -> dict[str, float]:
        return normalize_mix(self.stages[stage - 1]["mix"], self.dataset_weights)

    # -- loaders ------------------------------------------------------------------------------------------
    def train_rows(self, epoch: int, world_size: int = 1) -> torch.Tensor:
        """The epoch's ``steps_per_epoch x batch_size x world_size`` rows: under DDP the sampler gives each of the
        ``world_size`` ranks its share, ``steps_per_epoch`` batches of ``batch_size`` (as baking's
        ``steps_loader`` supplies ``steps x world_size`` items); the first ``steps_per_epoch x batch_size`` rows
        are those of a one-process run."""
        rng = random.Random(self.seed * 7919 + epoch)
        mix = self.mix_of_stage(self.stage_of_epoch(epoch))
        need = self.steps_per_epoch * self.batch_size * int(world_size)
        rows = pack(self.pool.sample_texts(mix, need * (self.seq_len + 1) + 4096, rng, "train"),
                    self.tokenizer, self.seq_len)
        return rows[:need]

    def val_rows_tensor(self) -> torch.Tensor:
        if self._val is None:
            mix = normalize_mix({t: 1.0 for t in self.stages[-1]["mix"]})
            self._val = heldout_rows(self.pool, mix, self.val_rows, self.seq_len, self.tokenizer,
                                     random.Random(self.seed * 104729), "val")
        return self._val

    def train_dataloader(self) -> DataLoader:
        epoch = self.trainer.current_epoch if self.trainer is not None else self.epoch
        rows = self.train_rows(epoch, ranks_of(self.trainer)[0])
        return DataLoader(TensorDataset(rows), batch_size=self.batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        data = TensorDataset(self.val_rows_tensor())
        return DataLoader(data, batch_size=self.batch_size, sampler=ShardSampler(data, *ranks_of(self.trainer)))
