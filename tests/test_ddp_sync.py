"""``lm_module.weight_spread_across_ranks``: the check that DDP replicas ended a fit equal, run on two real gloo
processes — 0 when both ranks hold the same weights, above 0 when one rank's weights drifted, None without DDP."""
from __future__ import annotations

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from agentforge.training.lm_module import weight_spread_across_ranks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, out) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)  # the same initial weights on both ranks
        model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
        equal = weight_spread_across_ranks(model)
        if rank == 1:
            with torch.no_grad():
                model[1].bias[0] += 0.5
        out[rank] = (equal, weight_spread_across_ranks(model))
    finally:
        dist.destroy_process_group()


def test_equal_replicas_have_zero_spread_and_a_drifted_rank_shows():
    out = mp.Manager().dict()
    # forked, not spawned: a spawned rank re-imports torch and Lightning (~5 s each); the ranks' work is the same
    mp.start_processes(_rank, args=(_free_port(), out), nprocs=2, join=True, start_method="fork")
    (equal0, drift0), (equal1, drift1) = out[0], out[1]
    assert equal0 == equal1 == 0.0
    # rank 1's bias[0] = b moved by 0.5: that tensor's sum differs by 0.5, its sum of squares by |b + 0.25|
    assert drift0 == drift1 and drift0 >= 0.5 - 1e-9


def test_no_process_group_no_figure():
    assert weight_spread_across_ranks(torch.nn.Linear(2, 2)) is None
