"""TensorBoard events of training runs (`tamt.train.engine.RunDir`): beside metrics.jsonl, the same numbers read back by
TensorBoard's own reader, every step once after a killed run resumes, written by the main process only; and runs that go
on as before, writing no events, where tensorboard is not installed."""
import importlib.util, json, os, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import tamt.train.engine as engine
from tamt.train.engine import read_metrics, read_tensorboard, tensorboard_tags
from conftest import free_port, need

HERE = Path(__file__).parent
TORCHRUN = str(Path(sys.executable).parent / 'torchrun')
TINY = dict(model=dict(embed_dim=64, depth=2, num_heads=1, img_size=32, num_frames=4, groups=2, taa_blocks=1),
            decoder_dim=32, decoder_heads=1, num_workers=0, decode_short_side=32, progress=False, amp='fp32')


def have_tensorboard(): need(importlib.util.find_spec('tensorboard') is not None, 'tensorboard is not installed (pip install tensorboard)')


def expected(run):
    "tag -> [(step, value in float32)] that the run's metrics.jsonl says its events hold."
    want = {}
    for r in read_metrics(run):
        for t, v in tensorboard_tags(r).items(): want.setdefault(t, []).append((r['step'], float(np.float32(v))))
    return want


def events(run): return sorted(Path(run).glob('events.out.tfevents.*'))


def env(**kw):
    "This environment for a subprocess, with TensorBoard at its default (TAMT_TENSORBOARD unset), one thread per process."
    return {**{k: v for k, v in os.environ.items() if k != 'TAMT_TENSORBOARD'}, 'OMP_NUM_THREADS': '1', **kw}


class Killed(Exception): pass


def test_killed_and_resumed_pretraining_has_each_step_once(tmp_path, monkeypatch):
    """SSL pre-training (a real recipe, through `RunDir.log`) killed while writing its step-6 checkpoint: steps 4-6 were
    logged after the step-3 checkpoint. Resumed, it logs them again; the events hold each step once, equal to metrics.jsonl."""
    have_tensorboard(); monkeypatch.delenv('TAMT_TENSORBOARD', raising=False)
    from tamt.data.synthetic import build_builtin
    from tamt.pretrain.run import preset, pretrain_ssl
    data = build_builtin(tmp_path / 'builtin', scale=0.04, domains=['source'], progress=False)
    cfg = preset('cpu_tiny', data_root=str(data), ssl_epochs=2, ssl_batch=4, ckpt_every=3, log_every=1, max_steps=8, **TINY)
    save = engine.save_torch
    def killed_at_6(obj, path):
        if obj['step'] == 6: raise Killed()
        save(obj, path)
    monkeypatch.setattr(engine, 'save_torch', killed_at_6)
    with pytest.raises(Killed): pretrain_ssl(tmp_path / 'run', cfg)
    run = tmp_path / 'run' / 'ssl'
    assert [s for s, _ in read_tensorboard(run)['train/loss']] == [1, 2, 3, 4, 5, 6]
    monkeypatch.setattr(engine, 'save_torch', save)
    pretrain_ssl(tmp_path / 'run', cfg)                                             # resumes from step 3
    assert [r['step'] for r in read_metrics(run)] == list(range(1, 9))
    tb = read_tensorboard(run)
    assert sorted(tb) == ['train/clips_per_s', 'train/epoch', 'train/loss', 'train/lr']
    assert tb == expected(run) and [s for s, _ in tb['train/loss']] == list(range(1, 9))
    assert len(events(run)) == 1


def test_only_the_main_process_writes_events(tmp_path):
    "Two processes (torchrun, gloo, DDP): one events file, from rank 0, with each step once and metrics.jsonl's numbers."
    have_tensorboard()
    r = subprocess.run([TORCHRUN, '--nproc_per_node', '2', '--master_port', str(free_port()), str(HERE / 'tb_tiny_run.py'),
                        str(tmp_path / 'run'), '6'], capture_output=True, text=True, timeout=600, env=env())
    assert r.returncode == 0, r.stderr[-3000:]
    out = [json.loads((tmp_path / f'run.rank{k}.json').read_text()) for k in (0, 1)]   # files: the merged stdout may join the two lines
    assert [(o['rank'], o['world']) for o in out] == [(0, 2), (1, 2)]
    assert out[0]['tensorboard_imported'] and not out[1]['tensorboard_imported']   # rank 1 never even imports it
    assert len(events(tmp_path / 'run')) == 1
    assert read_tensorboard(tmp_path / 'run') == expected(tmp_path / 'run')
    assert [s for s, _ in read_tensorboard(tmp_path / 'run')['train/loss']] == list(range(1, 7))


@pytest.mark.parametrize('how', ['package missing', 'TAMT_TENSORBOARD=0'])
def test_without_tensorboard_runs_write_no_events(tmp_path, how):
    "A fresh process where tensorboard cannot be imported, or where it is turned off: the run works, and no event file appears."
    r = subprocess.run([sys.executable, str(HERE / 'tb_tiny_run.py'), str(tmp_path / 'run'), '6', *(['--no-tensorboard-package'] if how == 'package missing' else [])],
                       capture_output=True, text=True, timeout=600,
                       env=env(**({'TAMT_TENSORBOARD': '0'} if how.startswith('TAMT') else {})))
    assert r.returncode == 0, r.stderr[-3000:]
    assert not json.loads(r.stdout.strip().splitlines()[-1])['tensorboard_imported']
    assert [row['step'] for row in read_metrics(tmp_path / 'run')] == list(range(1, 7))
    assert events(tmp_path / 'run') == [] and 'tensorboard' not in r.stderr.lower()


def test_importing_tamt_does_not_import_tensorboard():
    "TensorBoard is imported when a run writes its first row, not with tamt: nothing is paid where it is off."
    r = subprocess.run([sys.executable, '-c', 'import sys, tamt, tamt.train.engine, tamt.pretrain.run, tamt.fewshot.finetune; '
                        'print(sorted(m for m in sys.modules if m.split(".")[0] == "tensorboard" or m == "torch.utils.tensorboard"))'],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == '[]'
