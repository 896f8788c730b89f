"""Run under ``python -m torch.distributed.run --standalone --nproc_per_node 2``:
optdsl.torch's Adam with TorchAllReduce (gloo) equals the whole batch on one process, to
rtol 1e-12 in float64 (tests/distributed)."""

import numpy as np
import torch
import torch.distributed as dist

import optdsl.torch as ot
from optdsl.distributed import TorchAllReduce

dist.init_process_group("gloo")
rank, size = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
x, y = torch.randn(64, 5, dtype=torch.float64), torch.randn(64, 3, dtype=torch.float64)
start = torch.nn.Linear(5, 3).double().state_dict()


def train(model, opt, rows, hook=None):
    for _ in range(20):
        opt.zero_grad()
        loss = ((model(x[rows]) - y[rows]) ** 2).mean()
        loss.backward()
        opt.step()


mine = torch.nn.Linear(5, 3).double()
mine.load_state_dict(start)
opt = ot.Adam(mine.parameters(), lr=0.01)
hook = TorchAllReduce()
opt.register_grad_hook(hook)
share = len(x) // size
train(mine, opt, slice(rank * share, (rank + 1) * share))

ref = torch.nn.Linear(5, 3).double()
ref.load_state_dict(start)
train(ref, ot.Adam(ref.parameters(), lr=0.01), slice(None))
for a, b in zip(mine.parameters(), ref.parameters(), strict=True):
    np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-12, atol=1e-14)
print(f"rank {rank}: ok, {hook.buckets_last_step} buckets", flush=True)
dist.destroy_process_group()
