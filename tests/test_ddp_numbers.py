"""The numbers a DDP run reports are the whole run's, and no reported figure depends on a timing:

1. validation loss under DDP is the whole validation set's (every row once, summed over the ranks), not rank 0's
   padded shard (``datamodule.ShardSampler``, ``LMModule._whole_set_val``);
2. DDP keeps the optimizer steps, hence the LR schedule, of one process: an epoch draws
   ``steps_per_epoch x batch_size x world_size`` rows (``LMDataModule.train_rows``);
3. after their fine-tune, BitNet and eval let only rank 0 evaluate, time, print and write;
4. ``phase=eval`` scores a packed BitNet model's quality on the default kernels, whatever kernel a timing picks.

The DDP runs (two gloo processes on the CPU, ``slow``) take 45-60 s each on a 2-core CPU.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from agentforge.artifacts import cognate_config_from, save_model
from agentforge.data.datamodule import LMDataModule, ShardSampler
from agentforge.data.tokenizer import RESERVED_VOCAB, ByteTokenizer
from agentforge.models import CognateModel
from tests.conftest import TINY, compose_cfg, run_cli

DDP = ["hardware=ddp", "hardware.accelerator=cpu", "hardware.devices=2"]
TINY_DDP = [a for a in TINY if not a.startswith("hardware")] + DDP


def _tiny_checkpoint(path: Path, tmp_path: Path) -> Path:
    """An untrained checkpoint of the default (``size=tiny``) m1 model: enough for the phases' plumbing."""
    cfg = compose_cfg([], tmp_path)
    torch.manual_seed(0)
    model = CognateModel(cognate_config_from(OmegaConf.to_container(cfg.model, resolve=True), RESERVED_VOCAB)).eval()
    save_model(path, model, ByteTokenizer())
    return path


def _datamodule(steps: int = 3, batch: int = 4, val_rows: int = 5) -> LMDataModule:
    return LMDataModule(ByteTokenizer(), [{"epochs": 1, "mix": {"plain_text": 1.0, "arithmetic": 1.0}}], seq_len=16,
                        batch_size=batch, steps_per_epoch=steps, val_rows=val_rows, seed=3)


class _Trainer:
    """What the datamodule reads of a Trainer: its world size and rank, and the epoch."""

    def __init__(self, world_size: int, global_rank: int = 0):
        self.world_size, self.global_rank, self.current_epoch = world_size, global_rank, 0


# ---------------------------------------------------------------- 1. validation loss of the whole set
@pytest.mark.parametrize("n, world", [(5, 2), (8, 2), (7, 3), (1, 1), (4, 4)])
def test_validation_shards_cover_every_row_exactly_once(n, world):
    data = TensorDataset(torch.arange(n))
    shards = [list(ShardSampler(data, world, r)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))      # no row twice (no padding), none left out
    assert shards[0] == list(range(0, n, world))                           # rank r: rows[r::world]
    assert [len(ShardSampler(data, world, r)) for r in range(world)] == [len(s) for s in shards]


def test_fewer_rows_than_ranks_every_rank_scores_all_of_them():
    # no rank is left without a validation batch (it would skip validation and the reduction the others wait in)
    data = TensorDataset(torch.arange(1))
    assert [list(ShardSampler(data, 2, r)) for r in range(2)] == [[0], [0]]


def test_val_dataloader_keeps_its_shard_sampler_and_one_process_scores_all_rows():
    dm = _datamodule(val_rows=5)
    dm.trainer = _Trainer(2, 1)
    loader = dm.val_dataloader()
    # a DistributedSampler: Lightning's DDP leaves it alone (else it injects its own, which pads with duplicates)
    assert isinstance(loader.sampler, DistributedSampler) and isinstance(loader.sampler, ShardSampler)
    rows = torch.cat([b[0] for b in loader])
    assert torch.equal(rows, dm.val_rows_tensor()[1::2])
    dm.trainer = None
    assert torch.equal(torch.cat([b[0] for b in dm.val_dataloader()]), dm.val_rows_tensor())


# ---------------------------------------------------------------- 2. one process's steps per rank
def test_train_rows_scale_with_the_world_size_and_each_rank_gets_the_steps():
    dm = _datamodule(steps=3, batch=4)
    one, two = dm.train_rows(0), dm.train_rows(0, world_size=2)
    assert one.shape[0] == 3 * 4 and two.shape[0] == 3 * 4 * 2
    assert torch.equal(two[: len(one)], one)          # a one-process run's rows come first
    dm.trainer = _Trainer(2)
    loader = dm.train_dataloader()
    assert len(loader.dataset) == 24
    for rank in (0, 1):   # the split Lightning's DDP makes of it: 3 full batches of 4 on each rank
        sampler = DistributedSampler(loader.dataset, num_replicas=2, rank=rank, shuffle=False)
        batches = list(DataLoader(loader.dataset, batch_size=4, sampler=sampler))
        assert [len(b[0]) for b in batches] == [4, 4, 4]


@pytest.mark.slow
def test_ddp_cognate_validation_loss_is_the_whole_sets_and_steps_are_one_process(tmp_path):
    """Defects 1 and 2 in one DDP run (~50 s): 5 validation rows over 2 ranks, 2 epochs x 3 steps."""
    proc = run_cli(["phase=cognate", "model=m1", *TINY_DDP, "phase.val_rows=5"], tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = json.loads((tmp_path / "outputs" / "artifacts" / "cognate" / "model1" / "metrics.json").read_text())
    # the same model on all 5 rows (rank 0, after the fit): before the fix, rank 0's shard {0, 2, 4}
    assert final["final/val_loss"] == pytest.approx(final["ablation/trained_val_loss"], rel=1e-5)
    run_dir = next((tmp_path / "outputs" / "runs").rglob("*_cognate_*"))
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in rows if "train/loss" in r]) == 2 * 3   # max_epochs x steps_per_epoch (was 4)


# ---------------------------------------------------------------- 3. rank 0 alone after the fine-tune
class _OtherRankTrainer:
    """A Trainer as a DDP rank other than 0 sees it after ``fit`` (the fit itself is not what is tested here)."""

    is_global_zero, global_step = False, 0

    def fit(self, module, datamodule=None, ckpt_path=None):
        self.global_step = module.total_steps


def test_eval_rank_other_than_zero_stops_after_its_fine_tune(tmp_path, monkeypatch, capsys):
    import agentforge.training.trainer as trainer_mod
    from agentforge.phases import eval as eval_phase

    monkeypatch.setattr(trainer_mod, "build_trainer", lambda *a, **k: _OtherRankTrainer())
    monkeypatch.setattr(eval_phase, "evaluate", lambda *a, **k: pytest.fail("a rank other than 0 evaluated"))
    ckpt = _tiny_checkpoint(tmp_path / "ck", tmp_path)
    cfg = compose_cfg(["phase=eval", "experiment=smoke", f"phase.checkpoint={ckpt}", "phase.stage=finetuned_vanilla",
                       "phase.finetune_steps=2"], tmp_path)
    assert eval_phase.run(cfg) == {}
    assert not (tmp_path / "outputs" / "artifacts" / "eval_results").exists()
    assert not (tmp_path / "outputs" / "artifacts" / "eval").exists()     # nor the stage's model
    assert "evaluating" not in capsys.readouterr().out


def test_bitnet_rank_other_than_zero_stops_after_its_fine_tune(tmp_path, monkeypatch):
    from agentforge.phases import bitnet

    monkeypatch.setattr(bitnet, "build_trainer", lambda *a, **k: _OtherRankTrainer())
    monkeypatch.setattr(bitnet, "finalize", lambda *a, **k: pytest.fail("a rank other than 0 measured and wrote"))
    ckpt = _tiny_checkpoint(tmp_path / "ck", tmp_path)
    cfg = compose_cfg(["phase=bitnet", "experiment=smoke", f"phase.input={ckpt}", "phase.fine_tune=always"], tmp_path)
    assert bitnet.run(cfg) == {}
    assert not (tmp_path / "outputs" / "artifacts" / "bitnet").exists()


@pytest.mark.slow
def test_ddp_eval_fine_tune_takes_its_steps_and_reports_once(cognate_artifacts, tmp_path):
    """Defects 2 and 3 (~60 s): 4 fine-tune steps under DDP are 4 optimizer steps; one rank reports."""
    ckpt = cognate_artifacts / "cognate" / "model1"
    proc = run_cli(["phase=eval", "experiment=smoke", f"phase.checkpoint={ckpt}", "phase.stage=finetuned_vanilla",
                    "phase.finetune_steps=4", "phase.val_rows=5", *DDP], tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("report:") == 1 and proc.stdout.count("evaluating finetuned_vanilla") == 1, proc.stdout
    res = json.loads((tmp_path / "outputs" / "artifacts" / "eval_results" / "finetuned_vanilla_results.json").read_text())
    assert res["finetune"]["steps"] == 4


# ---------------------------------------------------------------- 4. quality figures never from a timing
def _packed_checkpoint(tmp_path: Path) -> Path:
    from agentforge.artifacts import load_model
    from agentforge.quant.checkpoint import save_packed
    from agentforge.quant.convert import convert_to_bitlinear

    model, tok, _ = load_model(_tiny_checkpoint(tmp_path / "fp", tmp_path))
    convert_to_bitlinear(model)
    return save_packed(tmp_path / "packed", model, tok)


def test_eval_quality_of_a_packed_model_does_not_depend_on_the_timed_kernel(tmp_path, monkeypatch):
    import agentforge.quant.bitlinear as bitlinear
    from agentforge.phases import eval as eval_phase
    from agentforge.quant import native

    ckpt = _packed_checkpoint(tmp_path)
    results = {}
    # phase.native_kernel: eval offers the native decode kernel as phase=bitnet does (auto: where make install built
    # it); until 2026-11-28 only a BitNet run earlier in the same process had built it (an audit). The build is
    # recorded, not run: whether it loads is the kernel's own tests' business
    builds = []
    monkeypatch.setattr(native, "installed", lambda: True)
    monkeypatch.setattr(native, "build", lambda verbose=False: builds.append(1) or False)
    for kernel, setting in (("int8", "auto"), ("float", "false")):   # what a timing run might pick, either way
        monkeypatch.setattr(bitlinear, "pick_kernel", lambda medians, margin=0.05, k=kernel: k)
        out = tmp_path / kernel
        cfg = compose_cfg(["phase=eval", "experiment=smoke", f"phase.checkpoint={ckpt}", f"phase.stage=k_{kernel}",
                           f"phase.native_kernel={setting}"], out)
        eval_phase.run(cfg)
        assert len(builds) == 1, (kernel, setting, builds)   # auto and installed: built; false: not
        results[kernel] = json.loads((out / "outputs" / "artifacts" / "eval_results" / f"k_{kernel}_results.json")
                                     .read_text())
    a, b = results["int8"], results["float"]
    assert a["per_example"]["row_loss"] == b["per_example"]["row_loss"]     # bit for bit
    assert a["per_example"]["generations"] == b["per_example"]["generations"]
    for k in ("loss", "perplexity", "token_accuracy", "reasoning_accuracy", "arc_easy_accuracy", "piqa_accuracy"):
        assert a["metrics"][k] == b["metrics"][k], k
    # the speed figures use the measured choice, and the results say which kernels each used
    assert a["kernels"]["quality"] == b["kernels"]["quality"] == {"prefill": "int8", "decode": "float"}
    assert (a["kernels"]["speed"]["prefill"], b["kernels"]["speed"]["prefill"]) == ("int8", "float")
    assert a["metrics"]["latency_ms"] > 0 and b["metrics"]["throughput_tokens_per_sec"] > 0


def test_load_any_keeps_the_default_kernels_unless_asked(tmp_path, monkeypatch):
    import agentforge.quant.bitlinear as bitlinear
    from agentforge.artifacts import load_any

    monkeypatch.setattr(bitlinear, "pick_kernel", lambda medians, margin=0.05: "float")
    ckpt = _packed_checkpoint(tmp_path)
    model = load_any(ckpt)[0]
    assert model.bitnet_kernel is None
    assert {(m.kernel, m.kernel_decode) for m in model.modules() if isinstance(m, bitlinear.BitLinear)} == {("int8", "float")}
    timed = load_any(ckpt, choose_kernel=True)[0]
    assert timed.bitnet_kernel["kernel"] == "float"
    assert load_any(_tiny_checkpoint(tmp_path / "plain", tmp_path), choose_kernel=True)[0] is not None  # others: ignored
