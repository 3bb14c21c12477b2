"""Pre-training over two nodes, both on this machine: two `torchrun --nnodes 2 --nproc_per_node 1` launches, as two nodes
would start them, meet at one c10d rendezvous endpoint on 127.0.0.1 (CPU, gloo). One SSL step's gradients
(tests/ddp_grads.py, as `tamt.pretrain.run.ssl_stage` sets the step up) with 4 clips on each node equal those of one
process with the global batch of 8, within float32 rounding: the check tests/test_pretrain.py makes for 2 processes on one node."""
import json, os, subprocess
from pathlib import Path
import torch
from conftest import free_port
from test_pretrain import TORCHRUN, TINY, data, grads, within_rounding          # noqa: F401 (data: the module's small dataset)


def test_two_nodes_match_one_process(data, tmp_path):  # noqa: F811 (data: the fixture imported above)
    one = grads(data, tmp_path, 1)
    conf = json.dumps(dict(model=TINY['model'], data_root=str(data), ssl_batch=4, ssl_epochs=1, num_workers=0, decode_short_side=32,
                           decoder_dim=32, decoder_heads=1, progress=False))
    out, endpoint = tmp_path / 'grads_2_nodes.pt', f'127.0.0.1:{free_port()}'
    node = lambda rank: [TORCHRUN, '--nnodes', '2', '--nproc_per_node', '1', '--node_rank', str(rank), '--rdzv_backend', 'c10d',
                         '--rdzv_endpoint', endpoint, '--rdzv_id', 'tamt-two-nodes', str(Path(__file__).parent / 'ddp_grads.py'), conf, str(out)]
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    nodes = [subprocess.Popen(node(r), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for r in (0, 1)]
    try: logs = [p.communicate(timeout=300) for p in nodes]
    finally:
        for p in nodes:
            if p.poll() is None: p.kill()
    for p, (so, se) in zip(nodes, logs): assert p.returncode == 0, se[-3000:]
    two = torch.load(out, weights_only=True)                              # saved by the process of global rank 0
    assert one.keys() == two.keys() and len(one) > 20
    assert sum(float(g.abs().max()) > 0 for g in one.values()) > len(one) // 2
    for k in one: assert within_rounding(two[k], one[k]), (k, float((two[k] - one[k]).abs().max()), float(one[k].abs().max()))
