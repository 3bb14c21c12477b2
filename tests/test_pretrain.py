"Pre-training runs that survive: exact resume, refused config changes, the SSL → SL → HTTN hand-off; and 2-process DDP."
import json, os, subprocess, sys
from pathlib import Path
import pytest, torch
import tamt
from tamt.core import ConfigError
from tamt.pretrain.run import preset, pretrain_ssl, pretrain_sl
from tamt.data.synthetic import build_builtin

TAMT = str(Path(sys.executable).parent / 'tamt')
TORCHRUN = str(Path(sys.executable).parent / 'torchrun')
TINY = dict(model=dict(embed_dim=64, depth=2, num_heads=1, img_size=32, num_frames=4, groups=2, taa_blocks=1),
            decoder_dim=32, decoder_heads=1, num_workers=0, decode_short_side=32, progress=False, amp='fp32')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return build_builtin(tmp_path_factory.mktemp('d') / 'builtin', scale=0.2, domains=['source'], progress=False)


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


def test_two_processes_match_one(data, tmp_path):
    "torchrun, 2 CPU processes, gloo: one SSL step on a global batch of 8 equals the single-process step."
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    def run(out, *launch, batch):
        over = ['-p', f'data_root="{data}"', '-p', 'max_steps=1', '-p', f'ssl_batch={batch}', '-p', 'ssl_epochs=1', '-p', 'ssl_warmup_epochs=0']   # no warm-up: step 1 has lr > 0
        over += [x for k, v in TINY.items() for x in ('-p', f'{k}={json.dumps(v)}')]
        r = subprocess.run([*launch, 'pretrain', '--preset', 'cpu_tiny', '--out', str(out), '--stages', 'ssl', *over],
                           capture_output=True, text=True, timeout=600, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
    run(tmp_path / 'one', TAMT, batch=8)
    run(tmp_path / 'two', TORCHRUN, '--nproc_per_node', '2', '--master_port', '29517', '-m', 'tamt.cli', batch=4)
    a, b = last_model(tmp_path / 'one' / 'ssl'), last_model(tmp_path / 'two' / 'ssl')
    assert a.keys() == b.keys()
    for k in a: torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    assert torch.load(tmp_path / 'one' / 'ssl' / 'checkpoints' / 'last.pt', weights_only=True)['step'] == 1
    from tamt.pretrain.ssl import VideoMAEPretrainer
    c = cfg(data); torch.manual_seed(c.seed)
    init = VideoMAEPretrainer(c.model_config(), decoder_dim=c.decoder_dim, decoder_depth=c.decoder_depth,
                              decoder_heads=c.decoder_heads, mask_ratio=c.mask_ratio).state_dict()
    assert init.keys() == a.keys() and sum(not torch.equal(init[k], a[k]) for k in a) > len(a) // 2   # the step moved the weights
