"""Run by tests/test_ppo_distributed.py under torchrun: one replica's view of World's collectives,
written as JSON to $REPLICA_OUT/rank<N>.json (a separate script, so no test module is
re-imported by a spawned child; one file per rank, as both share one stdout)."""

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from rlhf_loop.ppo.distributed import join_world

world = join_world()
param = torch.nn.Parameter(torch.ones(3))
param.grad = torch.full((3,), float(world.rank + 1))  # different data, different gradients
lonely = torch.nn.Parameter(torch.ones(2))  # a gradient on rank 0 only: rank 1 ran out of data
lonely.grad = torch.full((2,), 2.0) if world.is_main else None
world.average_gradients([param, lonely])
gathered, mine = world.gather(torch.arange(world.rank + 1, dtype=torch.float32))
view = {
    "rank": world.rank,
    "grad": param.grad.tolist(),
    "gathered": gathered.tolist(),
    "mine": mine,
    "mean": world.mean({"x": world.rank * 2.0}),
    "lonely": lonely.grad.tolist(),
    "most": world.most(world.rank * 3 + 1),
}
(Path(os.environ["REPLICA_OUT"]) / f"rank{world.rank}.json").write_text(json.dumps(view))
dist.destroy_process_group()
