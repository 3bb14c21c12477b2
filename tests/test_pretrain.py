"Pre-training runs that survive: exact resume, refused config changes, the SSL → SL → HTTN hand-off; and 2-process DDP."
import json, os, subprocess, sys
from pathlib import Path
import pytest, torch
import tamt
from tamt.core import ConfigError
from tamt.pretrain.run import preset, pretrain_ssl, pretrain_sl
from tamt.data.synthetic import build_builtin
from conftest import free_port, need

TAMT = str(Path(sys.executable).parent / 'tamt')
TORCHRUN = str(Path(sys.executable).parent / 'torchrun')
TINY = dict(model=dict(embed_dim=64, depth=2, num_heads=1, img_size=32, num_frames=4, groups=2, taa_blocks=1),
            decoder_dim=32, decoder_heads=1, num_workers=0, decode_short_side=32, progress=False, amp='fp32')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return build_builtin(tmp_path_factory.mktemp('d') / 'builtin', scale=0.04, domains=['source'], progress=False)


def cfg(data, **kw): return preset('cpu_tiny', data_root=str(data), **{**TINY, **kw})


def last_model(run_dir): return torch.load(Path(run_dir) / 'checkpoints' / 'last.pt', weights_only=True)['model']


def test_resume_is_exact(data, tmp_path):
    c = cfg(data, ssl_epochs=2, ssl_batch=4, ckpt_every=3, log_every=1)
    pretrain_ssl(tmp_path / 'a', c.update(max_steps=7))                        # uninterrupted
    pretrain_ssl(tmp_path / 'b', c.update(max_steps=3))                        # "killed" after step 3 ...
    pretrain_ssl(tmp_path / 'b', c.update(max_steps=7))                        # ... resumed
    a, b = last_model(tmp_path / 'a' / 'ssl'), last_model(tmp_path / 'b' / 'ssl')
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.load(tmp_path / 'b' / 'ssl' / 'checkpoints' / 'last.pt', weights_only=True)['step'] == 7
    ra = [r['loss'] for r in map(json.loads, (tmp_path / 'a' / 'ssl' / 'metrics.jsonl').read_text().splitlines())]
    rb = [r['loss'] for r in map(json.loads, (tmp_path / 'b' / 'ssl' / 'metrics.jsonl').read_text().splitlines())]
    assert ra == rb and len(ra) == 7
    with pytest.raises(ConfigError, match=r'differing keys: mask_ratio \(run: 0.75, now: 0.5\)'):
        pretrain_ssl(tmp_path / 'b', c.update(max_steps=7, mask_ratio=0.5))


def test_ssl_sl_handoff(data, tmp_path):
    c = cfg(data, ssl_epochs=1, ssl_batch=4, sl_epochs=1, sl_batch=4, max_steps=2)
    r = pretrain_ssl(tmp_path, c)
    s = pretrain_sl(tmp_path, c, init=r['checkpoint'])
    ssl_w = torch.load(r['checkpoint'], weights_only=True)['model']['encoder.blocks.0.attn.qkv.weight']
    m = tamt.load_model(s['checkpoint'], verbose=False)                     # what few-shot tuning starts from
    assert m.cfg.embed_dim == 64 and m.cfg.num_heads == 1 and m.load_report.format == 'videomae'
    sl_w = m.backbone.blocks[0].attn.qkv.weight
    assert not torch.equal(sl_w, torch.zeros_like(sl_w)) and (sl_w - ssl_w).abs().max() < 0.05   # SL started from SSL
    assert 0 <= s['sl_top1'] <= 1


def grads(data, tmp_path, world, reduction='mean'):
    "One SSL step's gradients (tests/ddp_grads.py) with a global batch of 8 in `world` processes."
    conf = json.dumps(dict(model=TINY['model'], data_root=str(data), ssl_batch=8 // world, ssl_epochs=1, num_workers=0,
                           decode_short_side=32, decoder_dim=32, decoder_heads=1, progress=False))
    out = tmp_path / f'grads_{world}_{reduction}.pt'
    launch = [sys.executable] if world == 1 else [TORCHRUN, '--nproc_per_node', str(world), '--master_port', str(free_port())]
    r = subprocess.run([*launch, str(Path(__file__).parent / 'ddp_grads.py'), conf, str(out), reduction], capture_output=True, text=True,
                       timeout=600, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr[-3000:]
    return torch.load(out, weights_only=True)


def within_rounding(g, ref) -> bool:
    "float32 rounding of a sum in another order: 1e-4 relative, and 1e-5 of the tensor's largest gradient for ones near zero."
    return torch.allclose(g, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


def test_ddp_gradients_equal_one_process(data, tmp_path):
    """2 CPU processes (torchrun, gloo, DDP) each with 4 clips give the gradients of one process with the global batch of 8, within
    float32 rounding; and the comparison catches a broken reduction: a gradient summed but not averaged, or not reduced at all."""
    one, two = grads(data, tmp_path, 1), grads(data, tmp_path, 2)
    assert one.keys() == two.keys() and len(one) > 20
    assert sum(float(g.abs().max()) > 0 for g in one.values()) > len(one) // 2          # real gradients, not zeros
    for k in one: assert within_rounding(two[k], one[k]), (k, float((two[k] - one[k]).abs().max()), float(one[k].abs().max()))
    for broken in ('sum', 'local'):
        g = grads(data, tmp_path, 2, broken)
        assert sum(not within_rounding(g[k], one[k]) for k in one) > len(one) // 2, broken


def test_two_processes_match_one(data, tmp_path):
    """`torchrun` of `tamt pretrain`, 2 CPU processes: one SSL step on a global batch of 8 gives the single-process weights. Adam's
    first step moves a weight by about lr·sign(g), so a gradient coordinate near zero may flip sign under another reduction order:
    rarely, and by at most 2·lr. A missing all-reduce flips about half of them."""
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    def run(out, *launch, batch):
        over = ['-p', f'data_root="{data}"', '-p', 'max_steps=1', '-p', f'ssl_batch={batch}', '-p', 'ssl_epochs=1', '-p', 'ssl_warmup_epochs=0']   # no warm-up: step 1 has lr > 0
        over += [x for k, v in TINY.items() for x in ('-p', f'{k}={json.dumps(v)}')]
        r = subprocess.run([*launch, 'pretrain', '--preset', 'cpu_tiny', '--out', str(out), '--stages', 'ssl', *over],
                           capture_output=True, text=True, timeout=600, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
    run(tmp_path / 'one', TAMT, batch=8)
    run(tmp_path / 'two', TORCHRUN, '--nproc_per_node', '2', '--master_port', str(free_port()), '-m', 'tamt.cli', batch=4)
    a, b = last_model(tmp_path / 'one' / 'ssl'), last_model(tmp_path / 'two' / 'ssl')
    assert a.keys() == b.keys()
    lr = cfg(data).ssl_lr * 8 / 256
    n = sum(v.numel() for v in a.values())
    off = sum(int((~torch.isclose(a[k], b[k], rtol=1e-5, atol=1e-6)).sum()) for k in a)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 2.01 * lr and off <= 1e-4 * n, (off, n)
    assert torch.load(tmp_path / 'one' / 'ssl' / 'checkpoints' / 'last.pt', weights_only=True)['step'] == 1
    from tamt.pretrain.ssl import VideoMAEPretrainer
    c = cfg(data); torch.manual_seed(c.seed)
    init = VideoMAEPretrainer(c.model_config(), decoder_dim=c.decoder_dim, decoder_depth=c.decoder_depth,
                              decoder_heads=c.decoder_heads, mask_ratio=c.mask_ratio).state_dict()
    assert init.keys() == a.keys() and sum(not torch.equal(init[k], a[k]) for k in a) > len(a) // 2   # the step moved the weights


def test_full_disk_keeps_the_last_checkpoint_and_resumes_exactly(data, tmp_path):
    """A disk that fills up during pre-training: the run stops naming the file and the checkpoint that is kept, that checkpoint
    loads, no temporary file is left, and the same command run again (with space) resumes and ends bit-identical to a run that
    was never interrupted. The small disk is a real tmpfs in a private mount namespace (tests/disk_full.py)."""
    launch = next((l for l in (['unshare', '-rm'], ['unshare', '-m'])
                   if subprocess.run([*l, 'sh', '-c', f'mount -t tmpfs -o size=1m tmpfs {tmp_path}'], capture_output=True).returncode == 0), None)
    need(launch is not None, 'cannot mount a small tmpfs here (unshare -rm and unshare -m both failed)')
    r = subprocess.run([*launch, sys.executable, str(Path(__file__).parent / 'disk_full.py'), str(data), str(tmp_path)],
                       capture_output=True, text=True, timeout=600, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    last = tmp_path / 'small' / 'run' / 'ssl' / 'checkpoints' / 'last.pt'
    assert res['error'] == (f"no space left on device while writing {last}; ssl stopped at step 10: the last good checkpoint ({last}, "
                            "step 5) is kept; free space and run the same command again to resume from it"), res['error']
    assert res['error_type'] == 'WriteError' and res['kept_step'] == 5 and res['left_over'] == []
    assert res['resumed_step'] == 10 and res['identical'] and res['losses_equal'] and res['logged_steps'] == list(range(1, 11))


@pytest.mark.slow
def test_compiled_pretraining_matches_eager(data, tmp_path):
    "`compile=True` (torch.compile of the forward the loss calls) trains the same SSL and SL steps as eager, within reduction-order rounding; a bad mode fails first."
    with pytest.raises(ConfigError, match="compile='fast'"): pretrain_ssl(tmp_path / 'bad', cfg(data, compile='fast'))
    runs = {c: pretrain_ssl(tmp_path / f'ssl_{c}', cfg(data, compile=c, max_steps=3, ssl_epochs=1)) for c in (False, True)}
    a, b = runs[False]['ssl_loss'][0], runs[True]['ssl_loss'][0]
    assert abs(a - b) <= 1e-4 * abs(a), (a, b)
    for c in (False, True):
        pretrain_sl(tmp_path / f'sl_{c}', cfg(data, compile=c, max_steps=3, sl_epochs=1, mixup=0.0, cutmix=0.0), init=runs[False]['checkpoint'])
    wa, wb = last_model(tmp_path / 'sl_False' / 'sl'), last_model(tmp_path / 'sl_True' / 'sl')
    assert wa.keys() == wb.keys()
    assert all(torch.allclose(wa[k].float(), wb[k].float(), rtol=1e-3, atol=1e-5) for k in wa), 'compiled SL steps moved the weights differently'
