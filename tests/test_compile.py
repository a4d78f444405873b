"""``hardware.compile``: regional compilation (``training/trainer.compile_regions``) in Lightning — same state-dict
keys, QK-clip, exact resume — one reused graph for the blocks, and a bad value as one error line."""
from __future__ import annotations

import torch
from torch import nn


def _fit(tmp_path, epochs, compile_, resume=None, seed=0):
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from agentforge.models import CognateConfig, CognateModel
    from agentforge.training.lm_module import LMModule
    from agentforge.training.trainer import EpochCheckpoint, build_trainer

    L.seed_everything(seed, verbose=False)
    model = CognateModel(CognateConfig(d_model=32, n_layers=1, n_heads=2, ffn_hidden=64, window=8, max_steps=2,
                                       ltm_slots=4, ltm_key_dim=8))
    opt = {"name": "muon_grokfast", "lr": 1e-2, "weight_decay": 0.0, "warmup_steps": 0, "min_lr_ratio": 0.1,
           "kl_coef": 0.0, "grokfast": "ema", "grokfast_alpha": 0.9, "grokfast_lambda": 0.3, "qk_clip": 1e-3}
    module = LMModule(model, opt, total_steps=6)
    data = DataLoader(TensorDataset(torch.randint(0, 256, (12, 17), generator=torch.Generator().manual_seed(1))),
                      batch_size=4)
    trainer = build_trainer({"accelerator": "cpu", "compile": compile_, "deterministic": True}, loggers=False,
                            callbacks=[EpochCheckpoint(tmp_path / "last.ckpt")], max_epochs=epochs,
                            default_root_dir=tmp_path, enable_progress_bar=False, enable_checkpointing=False)
    trainer.fit(module, data, ckpt_path=resume)
    return model, module


def test_hardware_compile_trains_resumes_and_clips_like_eager(tmp_path):
    """hardware.compile (Dynamo with the `eager` backend here, to keep CI fast; `true` = inductor):
    same state-dict keys, QK-clip fires (tau tiny), and a compiled run resumed from its epoch
    checkpoint ends with the uncompiled run's exact weights."""
    ref, _ = _fit(tmp_path / "ref", 2, False)
    _fit(tmp_path / "c", 1, "eager")
    resumed, module = _fit(tmp_path / "c", 2, "eager", resume=tmp_path / "c" / "last.ckpt")
    assert all(b._compiled_call_impl is not None for b in resumed.blocks)   # regional: the blocks are compiled
    assert module.optimizers().optimizer.metrics()["optimizer/qk_clipped_heads"] > 0
    sd, ref_sd = resumed.state_dict(), ref.state_dict()
    assert sd.keys() == ref_sd.keys()
    for k in ref_sd:
        assert torch.equal(sd[k], ref_sd[k]), k


def test_compile_regions_compiles_each_block_as_one_reused_graph():
    """compile_regions: every block compiled in place, ONE Dynamo graph for two blocks x two recursion steps (same
    structure), the output unchanged; a model without ``blocks`` is compiled whole."""
    from torch._dynamo.utils import counters

    from agentforge.models import CognateConfig, CognateModel
    from agentforge.training.trainer import compile_regions

    torch.manual_seed(0)
    torch._dynamo.reset()
    counters.clear()
    model = CognateModel(CognateConfig(d_model=32, n_layers=2, n_heads=2, ffn_hidden=64, window=8, max_steps=2,
                                       ltm_slots=4, ltm_key_dim=8)).eval()
    x = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        ref = model(x).logits
        regions = compile_regions(model, "eager")
        out = model(x).logits
    assert regions == list(model.blocks) and all(b._compiled_call_impl is not None for b in model.blocks)
    assert model._compiled_call_impl is None and counters["stats"]["unique_graphs"] == 1
    torch.testing.assert_close(out, ref)
    lin = nn.Linear(4, 4)
    assert compile_regions(lin, "eager") == [lin] and lin._compiled_call_impl is not None


def test_bad_compile_value_is_one_error_line():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "agentforge", "phase=cognate", "hardware.compile=fast"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "error: hardware.compile must be true, false or a torch.compile backend" in r.stderr + r.stdout
