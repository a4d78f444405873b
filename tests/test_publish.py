"""Publishing a checkpoint to the artifacts dir: durable (every file fsynced before the renames, the directory after),
recovered when a kill fell between its two renames, announced before it replaces anything; and the start-up check
of the artifacts dir leaves no folder behind. Real directories and real checkpoints; only ``os.fsync`` is wrapped,
to record what it was called on (a power loss cannot be simulated here)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from agentforge import io as aio
from agentforge.artifacts import publish


def _ckpt(d: Path, value: float) -> Path:
    return aio.save_checkpoint(d, {"w": torch.full((3,), value)}, architecture="A", model_config={})


def _weights(d: Path) -> list[float]:
    return aio.load_checkpoint(d)[0]["w"].tolist()


def test_publish_fsyncs_every_file_and_the_copy_before_its_renames_and_the_directory_after(tmp_path, monkeypatch):
    """README: "write, fsync, rename". ``shutil.copytree`` fsyncs nothing: a power loss after the rename could
    leave the published name pointing at files whose data never reached the disk."""
    src, dst = _ckpt(tmp_path / "src", 7.0), tmp_path / "art" / "model1"
    (src / "sub").mkdir()
    (src / "sub" / "extra.json").write_text("{}")
    _ckpt(dst, 1.0)
    events: list[tuple] = []
    real_fsync, real_rename = os.fsync, Path.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def rename(self, target):
        events.append(("rename", str(self), str(target)))
        return real_rename(self, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(Path, "rename", rename)
    publish(src, dst)
    assert _weights(dst) == [7.0] * 3
    renames = [i for i, e in enumerate(events) if e[0] == "rename"]
    assert [events[i][1:] for i in renames] == [(str(dst), f"{dst}.old"), (f"{dst}.tmp", str(dst))]
    before = {e[1] for e in events[:renames[0]] if e[0] == "fsync"}
    tmp = f"{dst}.tmp"
    assert {f"{tmp}/model.safetensors", f"{tmp}/config.json", f"{tmp}/sub/extra.json", tmp, f"{tmp}/sub"} <= before
    assert ("fsync", str(dst.parent)) in events[renames[-1]:]


def test_a_publish_killed_between_its_renames_is_recovered_where_the_checkpoint_is_read(tmp_path):
    """SIGKILL after ``dst.rename(dst.old)`` and before ``tmp.rename(dst)``: no ``dst``, the previous model at
    ``dst.old`` (and the finished copy at ``dst.tmp``). The next reader used to find no checkpoint ('checkpoint not
    found: run the phase that produces it first'); it now renames ``.old`` back, once, and a publish over the
    half-done state ends with the new model and nothing left over. An incomplete ``.old`` is not made the model."""
    dst = tmp_path / "art" / "model1"
    _ckpt(Path(f"{dst}.old"), 1.0)
    _ckpt(Path(f"{dst}.tmp"), 7.0)
    assert aio.is_complete_checkpoint(dst)   # as the pipeline's planner asks
    assert _weights(dst) == [1.0] * 3 and not Path(f"{dst}.old").exists()
    Path(dst).rename(f"{dst}.old")           # killed again, then published over
    publish(_ckpt(tmp_path / "src", 7.0), dst)
    assert _weights(dst) == [7.0] * 3 and sorted(p.name for p in dst.parent.iterdir()) == ["model1"]
    broken = tmp_path / "art" / "model2"
    _ckpt(Path(f"{broken}.old"), 2.0)
    (Path(f"{broken}.old") / "config.json").unlink()
    assert not aio.is_complete_checkpoint(broken) and not broken.exists()


def test_on_publish_is_told_before_the_published_dir_is_replaced(tmp_path):
    """The pipeline retires its report here: the callback sees ``dst`` still holding the old model."""
    from agentforge.artifacts import on_publish

    dst = _ckpt(tmp_path / "art" / "model1", 1.0)
    seen = []
    with on_publish(lambda d: seen.append((d, _weights(d)))):
        publish(_ckpt(tmp_path / "src", 7.0), dst)
    publish(_ckpt(tmp_path / "src2", 8.0), dst)   # outside the block: not told
    assert seen == [(dst, [1.0] * 3)]


def test_the_artifacts_check_leaves_no_folder_it_created(tmp_path):
    """``main``'s start-up check of ``paths.artifacts`` created the folder to probe it: a run stopped by bad input
    left an empty ``artifacts/`` (and its parents) behind. An existing folder stays."""
    from agentforge.cli_errors import writable_problem

    assert writable_problem(str(tmp_path / "outputs" / "pipeline" / "x" / "artifacts")) is None
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()
    assert writable_problem(str(tmp_path / "kept")) is None and (tmp_path / "kept").is_dir()
