"""A tiny training run for tests/test_tensorboard.py: a linear model on 40 random points, `fit` into the run folder OUT for
STEPS steps (checkpoints every 5, a row per step), alone or under torchrun (DistributedDataParallel, gloo). With
--no-tensorboard-package the tensorboard package cannot be imported, as where it is not installed. Prints one JSON line
and writes it to OUT.rank<r>.json (under torchrun two processes' prints can share a line of the merged output).

    python tests/tb_tiny_run.py OUT STEPS [--no-tensorboard-package]"""
import json, sys
from pathlib import Path
if '--no-tensorboard-package' in sys.argv: sys.modules['tensorboard'] = sys.modules['torch.utils.tensorboard'] = None
import torch, torch.nn as nn
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from tamt.data.datasets import EpochBatchSampler
from tamt.train.engine import RunDir, fit, init_distributed


class Toy(Dataset):
    def __init__(self): g = torch.Generator().manual_seed(0); self.x = torch.randn(40, 6, generator=g); self.y = self.x @ torch.randn(6, 1, generator=g)
    def __len__(self): return 40
    def __getitem__(self, i): e, i = i; return self.x[i], self.y[i]


def main(out, steps):
    d = init_distributed('cpu')
    torch.manual_seed(0)
    net = nn.Linear(6, 1)
    model = nn.parallel.DistributedDataParallel(net) if d.world > 1 else net
    dl = DataLoader(Toy(), batch_sampler=EpochBatchSampler(40, 4, seed=1, rank=d.rank, world=d.world))
    fit(model, lambda m, b, s: (nn.functional.mse_loss(m(b[0]), b[1]), {}), dl, torch.optim.SGD(model.parameters(), lr=1e-2),
        total_steps=int(steps), run=RunDir(out, dict(lr=1e-2), main=d.main), ckpt_every=5, log_every=1, dist=d, progress=False)
    line = json.dumps(dict(rank=d.rank, world=d.world, tensorboard_imported=sys.modules.get('tensorboard') is not None))
    print(line); Path(f'{out}.rank{d.rank}.json').write_text(line)
    if d.world > 1: dist.destroy_process_group()


if __name__ == '__main__': main(*[a for a in sys.argv[1:] if not a.startswith('--')])
