"""One SSL pre-training step's gradients, as `tamt.pretrain.run.ssl_stage` sets the step up (data shard, tube masks,
DistributedDataParallel), saved by rank 0. Run alone or under torchrun; tests/test_pretrain.py compares the two.

    python tests/ddp_grads.py CONFIG_JSON OUT.pt [REDUCTION]

REDUCTION 'mean' is DDP's own all-reduce; 'sum' all-reduces without averaging and 'local' does not reduce at all: the
two broken reductions that the test must catch."""
import json, sys
import torch
import torch.distributed as dist
from tamt.pretrain.run import preset, ssl_stage
from tamt.train.engine import init_distributed


def _sum(state, bucket):
    "All-reduce a gradient bucket without dividing by the world size: one process's gradient is not averaged."
    return dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(lambda f: f.value()[0])


def _local(state, bucket):
    "No all-reduce at all: each process keeps its own gradient."
    fut = torch.futures.Future(); fut.set_result(bucket.buffer()); return fut


def main(config, out, reduction='mean'):
    cfg = preset('cpu_tiny', **json.loads(config))
    d = init_distributed('cpu')
    s = ssl_stage(cfg, d)
    if d.world > 1 and reduction != 'mean': s.model.register_comm_hook(None, {'sum': _sum, 'local': _local}[reduction])
    s.loader.batch_sampler.set_epoch(0, 0)
    batch = next(iter(s.loader))
    s.model.train()
    loss, _ = s.loss_fn(s.model, batch, 0)
    loss.backward()
    if d.main: torch.save({n: p.grad.detach().clone() for n, p in s.net.named_parameters() if p.grad is not None}, out)
    if d.world > 1: dist.destroy_process_group()


if __name__ == '__main__': main(*sys.argv[1:])
