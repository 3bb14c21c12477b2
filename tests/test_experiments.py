"""The experiment notebooks run through papermill with tiny parameters (a tiny model on a small built-in dataset), the main
job (`tamt run pipeline`, the pipeline notebook), a 2-run sweep through `tamt sweep` with a failing third run, and bad parameters."""
import csv, hashlib, json, re, subprocess, sys
from pathlib import Path
import nbformat
import pytest
import torch
from tamt.core import ConfigError
from tamt.experiments import EXPERIMENTS_DIR, check_params, experiment_notebooks, is_complete, run_experiment, run_sweep, Sweep

TAMT = str(Path(sys.executable).parent / 'tamt')
TINY = dict(embed_dim=64, depth=2, num_heads=1, img_size=32, num_frames=4, groups=2, taa_blocks=1)


def tamt(*args):
    return subprocess.run([TAMT, *map(str, args)], capture_output=True, text=True, timeout=600)


def rows_of(path):
    return list(csv.DictReader(open(path)))


def snapshot(folder):
    "{relative path: sha1} of every file under `folder`."
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(Path(folder).rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    "A small built-in dataset: 3 classes per split, 4 videos per class (3 train + 1 test on the source)."
    from tamt.data.synthetic import build_builtin
    return build_builtin(tmp_path_factory.mktemp('data') / 'builtin', scale=0.08, domains=['source', 'target_a', 'target_b'],
                         classes_per_split=3, progress=False)


@pytest.fixture(scope='module')
def pretrained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp('runs') / 'pretrain'
    res = run_experiment('pretrain', out, dict(data=data, model=TINY, ssl_epochs=2, sl_epochs=1, num_workers=0, device='cpu',
                                               overrides=dict(ssl_batch=4, sl_batch=4)))
    return out, res


def test_notebooks_are_papermill_sources():
    "Each experiment notebook: a `parameters` cell with the common parameters, no export cells, no outputs, no injected cell."
    assert sorted(experiment_notebooks()) == ['evaluate', 'finetune', 'pipeline', 'pretrain']
    for name, path in experiment_notebooks().items():
        nb = nbformat.read(path, as_version=4)
        tags = [c.metadata.get('tags', []) for c in nb.cells]
        assert sum('parameters' in t for t in tags) == 1 and not any('injected-parameters' in t for t in tags), name
        params = next(c for c in nb.cells if 'parameters' in c.metadata.get('tags', [])).source
        for p in ('data', 'device', 'seed', 'out_dir'): assert f'\n{p} = ' in '\n' + params, (name, p)
        assert "device = 'auto'" in params and 'out_dir = None' in params
        assert not any('#| export' in c.source for c in nb.cells), name
        assert not any(c.get('outputs') for c in nb.cells if c.cell_type == 'code'), name


def test_bad_parameters_fail_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown parameter 'ft_epoch'; accepted: data, data_roots, splits_dir, source_train"):
        run_experiment('pipeline', tmp_path / 'a', dict(ft_epoch=2))
    with pytest.raises(ConfigError, match=r"parameter eval_episodes='100' is str, but eval_episodes takes int \(default 1000\)"):
        run_experiment('pipeline', tmp_path / 'a', dict(eval_episodes='100'))
    with pytest.raises(ConfigError, match=r"ssl_epochs=1.5 is float, but ssl_epochs takes int or None"):
        run_experiment('pretrain', tmp_path / 'a', dict(ssl_epochs=1.5))
    with pytest.raises(ConfigError, match=r"n_shot='1' is str"):
        run_sweep(Sweep(notebook='evaluate', out=str(tmp_path / 's'), grid=dict(n_shot=[1, '1'])))
    assert not (tmp_path / 'a').exists() and not (tmp_path / 's').exists()
    # accepted: int for float, None where the default is None, a Path for a str, a tuple for a list
    assert check_params('finetune', dict(lr=1, init=None, data=tmp_path, seed=3)) == dict(lr=1.0, init=None, data=str(tmp_path), seed=3)
    assert check_params('pipeline', dict(shots=(1, 5), source=tmp_path, seeds=(0, 1)))['shots'] == [1, 5]
    r = tamt('run', 'finetune', '--out', tmp_path / 'b', '-p', 'epochs', 'two')
    assert r.returncode == 2 and "epochs='two' is str, but epochs takes int" in r.stderr and 'Traceback' not in r.stderr
    r = tamt('run', 'finetune', '--out', tmp_path / 'b', '-p', 'epoch', '2')
    assert r.returncode == 2 and "unknown parameter 'epoch'; accepted: init, method, data, target" in r.stderr
    assert not (tmp_path / 'b').exists()


def test_plain_papermill_checks_parameters(tmp_path):
    """Plain `papermill` (nothing of tamt's in between): a misspelt name or a wrong type fails in the guard cell right after the
    injected parameters, naming the parameter and the accepted ones; no later cell runs and nothing is written."""
    papermill = str(Path(sys.executable).parent / 'papermill')
    for args, msg in ((['-p', 'n_wayy', '5'], "evaluate.ipynb: unknown parameter 'n_wayy'; accepted: checkpoint, split, data, splits_dir, n_way"),
                      (['-p', 'n_shot', 'five'], "evaluate.ipynb: parameter n_shot='five' is str, but n_shot takes int (default 1)")):
        out = tmp_path / 'o.ipynb'
        r = subprocess.run([papermill, str(EXPERIMENTS_DIR / 'evaluate.ipynb'), str(out), '-p', 'out_dir', str(tmp_path / 'run'), *args],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode != 0 and msg in r.stderr, r.stderr[-2000:]
        nb = nbformat.read(out, as_version=4)
        code = [c for c in nb.cells if c.cell_type == 'code']
        tags = [c.metadata.get('tags', []) for c in code]
        i = next(i for i, t in enumerate(tags) if 'injected-parameters' in t)
        assert 'parameters' in tags[i - 1] and 'guard_params' in code[i + 1].source
        assert any(o.get('ename') == 'ConfigError' for o in code[i + 1].outputs)
        assert all(c.execution_count is None for c in code[i + 2:])                     # no work ran
        assert not (tmp_path / 'run').exists()


def test_pretrain_notebook(pretrained):
    out, res = pretrained
    assert len(res['ssl_loss']) == 2 and all(v > 0 for v in res['ssl_loss'])
    assert 0 <= res['sl_top1'] <= 1 and len(res['sl_top1_per_epoch']) == 1
    assert Path(res['checkpoint']).is_file() and Path(res['checkpoint']).parent == out
    assert json.loads((out / 'results.json').read_text())['checkpoint'] == res['checkpoint']
    assert [r['stage'] for r in rows_of(out / 'curves.csv')] == ['ssl', 'ssl', 'sl']
    assert (out / 'curves.html').stat().st_size > 1000 and is_complete(out)
    executed = nbformat.read(out / 'pretrain.ipynb', as_version=4)             # the executed copy holds the parameters it ran with
    assert any('injected-parameters' in c.metadata.get('tags', []) for c in executed.cells)
    assert 'injected-parameters' not in (EXPERIMENTS_DIR / 'pretrain.ipynb').read_text()   # the source notebook is untouched


def test_finetune_notebook(pretrained, data, tmp_path):
    res = run_experiment('finetune', tmp_path / 'ft', dict(init=pretrained[1]['checkpoint'], data=data, target='target_b', n_way=3,
                                                           n_shot=1, n_query=2, epochs=2, train_episodes=2, val_episodes=3,
                                                           val_n_query=2, num_workers=0, device='cpu'))
    assert len(res['val_acc']) == 2 and all(0 <= a <= 1 for a in res['val_acc']) and res['best_val'] == max(res['val_acc'])
    assert Path(res['best_checkpoint']).is_file() and res['target'] == 'target_b'
    assert [r['epoch'] for r in rows_of(tmp_path / 'ft' / 'val_acc.csv')] == ['1', '2']
    assert len(rows_of(tmp_path / 'ft' / 'train.csv')) >= 1 and (tmp_path / 'ft' / 'curves.html').is_file()


def test_evaluate_notebook(pretrained, data, tmp_path):
    from tamt.fewshot.harness import evaluate_checkpoint
    ck = pretrained[1]['checkpoint']
    res = run_experiment('evaluate', tmp_path / 'ev', dict(checkpoint=ck, data=data, split='target_a/novel', n_way=3, n_shot=1,
                                                           n_query=2, n_episodes=20, seed=4))
    assert {k: res[k] for k in ('episodes', 'n_way', 'n_shot')} == dict(episodes=20, n_way=3, n_shot=1)
    assert 0 <= res['acc_mean'] <= 1 and res['acc_ci95'] > 0
    assert len(rows_of(tmp_path / 'ev' / 'episodes.csv')) == 20 and (tmp_path / 'ev' / 'accuracy.html').is_file()
    torch.manual_seed(4)                                   # the notebook seeds what the source checkpoint lacks (the GTMT head)
    direct = evaluate_checkpoint(ck, data / 'target_a' / 'novel.json', data, n_way=3, n_shot=1, n_query=2, n_episodes=20, seed=4,
                                 progress=False)
    assert res['acc_mean'] == pytest.approx(direct['acc_mean'])                  # the same seeded episodes as the library call


def test_main_job_runs_the_pipeline(data, tmp_path):
    """`tamt run pipeline` runs the pipeline notebook over two seeds: pre-train each seed here, then per target tune and evaluate every
    method and shot, the checks (random floor, one-frame control, source-domain episodes), the summary over seeds and the claims."""
    out = tmp_path / 'main'
    r = tamt('run', 'pipeline', '--out', out, '-p', 'data', data, '-p', 'source', 'pretrain', '-p', 'preset', 'cpu_tiny', '-p', 'model', json.dumps(TINY),
             '-p', 'ssl_epochs', 1, '-p', 'sl_epochs', 1, '-p', 'pretrain_overrides', '{"ssl_batch": 4, "sl_batch": 4}',
             '-p', 'source_test', 'source/train', '-p', 'shots', '[1, 2]', '-p', 'ablation_shots', '[2]', '-p', 'n_way', 3,
             '-p', 'ft_epochs', 1, '-p', 'ft_episodes', 2, '-p', 'ft_val_episodes', 3, '-p', 'ft_n_query', 1,
             '-p', 'eval_episodes', 10, '-p', 'eval_n_query', 2, '-p', 'num_workers=0', '-p', 'device', 'cpu', '-p', 'seeds', '[0, 1]',
             '-p', 'tune_repeats', 2, '-p', 'ft_overrides', '{"view_bank": 2}')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'each tuned cell is the mean of 2 tunings' in r.stdout
    assert re.search(r'target +shot +random +frozen +taa +gtmt +httn +frozen, one frame +httn, one frame\n', r.stdout)
    assert 'mean ± std over seeds [0, 1]' in r.stdout and f"results: {out / 'results.csv'}" in r.stdout
    res = json.loads((out / 'results.json').read_text())
    tuned = sorted((x['seed'], x['target'], x['n_shot'], x['method']) for x in res['rows'] if x['target'] in ('target_a', 'target_b'))
    want = [(s, t, 1, m) for m in ('frozen', 'httn') for t in ('target_a', 'target_b') for s in (0, 1)]
    want += [(s, t, 2, m) for m in ('frozen', 'taa', 'gtmt', 'httn', 'random', 'frozen, one frame', 'httn, one frame') for t in ('target_a', 'target_b') for s in (0, 1)]
    assert tuned == sorted(want)
    src = sorted((x['seed'], x['method']) for x in res['rows'] if x['target'] == 'source (held-out)')
    assert src == [(0, 'frozen'), (0, 'random'), (1, 'frozen'), (1, 'random')]
    assert all(x['episodes'] == 10 and x['scheme'] == 'ssl_sl' for x in res['rows'])
    # every tuned cell is the mean of its two tunings (tuning seeds s and 1000 + s, each from a view bank of 2 views), tested on the same episodes
    for x in res['rows']:
        if x['method'] in ('taa', 'gtmt', 'httn'):
            assert x['tunings'] == 2 and len(x['tune_accs']) == 2 and x['acc_mean'] == pytest.approx(sum(x['tune_accs']) / 2), x
            d = out / f"seed{x['seed']}" / 'targets' / x['target'] / f"{x['target']}_{x['method']}_{x['n_shot']}shot_r1"
            assert json.loads((d / 'results.json').read_text())['config']['seed'] == 1000 + x['seed']
            assert json.loads((d / 'results.json').read_text())['view_bank']['views'] == 2
            assert json.loads((d / 'eval.json').read_text())['acc_mean'] == pytest.approx(x['tune_accs'][1])
        elif x['method'] == 'frozen' and x['target'] != 'source (held-out)': assert x['tunings'] == 1 and x['tune_std'] is None
    # the summary: one row per (target, shot, method) over both seeds, with their spread
    httn = next(x for x in res['summary'] if (x['target'], x['n_shot'], x['method']) == ('target_a', 2, 'httn'))
    accs = [x['acc_mean'] for x in res['rows'] if (x['target'], x['n_shot'], x['method']) == ('target_a', 2, 'httn')]
    assert httn['n_seeds'] == 2 and httn['acc_mean'] == pytest.approx(sum(accs) / 2) and httn['acc_std'] is not None
    # the claims are checked for each seed (a tiny model on 3 classes: they need not hold, but each is there)
    names = {c['check'] for c in res['checks']}
    assert {'frozen transfers', 'HTTN above frozen, intervals apart', 'frozen < TAA-only', 'one frame far below video'} <= names
    assert {c['seed'] for c in res['checks']} == {0, 1} and 'claims: ' in r.stdout
    # the diagnosis: each tuned HTTN's test episodes from Z, M1 and H(M2); Z under the released metric is the table's HTTN accuracy
    diag = res['diagnosis']
    assert sorted((d['seed'], d['target'], d['n_shot'], d['part'], d['metric']) for d in diag) == sorted(
        [(s, t, 1, p, m) for s in (0, 1) for t in ('target_a', 'target_b') for p in ('z', 'm1', 'h') for m in ('released', 'distance')]
        + [(s, t, 2, p, 'released') for s in (0, 1) for t in ('target_a', 'target_b') for p in ('z', 'm1', 'h')])
    for d in diag:
        if (d['part'], d['metric']) == ('z', 'released'):
            row = next(x for x in res['rows'] if (x['seed'], x['target'], x['n_shot'], x['method']) == (d['seed'], d['target'], d['n_shot'], 'httn'))
            assert d['acc_mean'] == pytest.approx(row['tune_accs'][0], abs=1e-9)     # the first tuning's model
    assert re.search(r'target +shot +metric +frozen +Z +M1 only +H only +H cv\n', r.stdout) and len(rows_of(out / 'diagnosis.csv')) == len(diag)
    # each seed pre-trained its own source model, and each tuned run started from its seed's model
    for s in (0, 1):
        ck = out / f'seed{s}' / 'pretrain' / 'sl_checkpoint.pth'
        assert ck.is_file() and json.loads((out / f'seed{s}' / 'targets' / 'target_a' / 'target_a_httn_1shot' / 'config.json').read_text())['init'] == str(ck)
    assert len(rows_of(out / 'results.csv')) == len(res['rows']) and len(rows_of(out / 'checks.csv')) == len(res['checks'])
    assert (out / 'results.html').is_file() and (out / 'pipeline.ipynb').is_file() and is_complete(out)


def test_sweep_two_runs_skip_and_a_failure(pretrained, data, tmp_path):
    "`tamt sweep`: 2 runs in parallel and one table; run again, both are skipped; a third value fails alone and is kept with its error."
    root = tmp_path / 'sweep'
    grid = tmp_path / 'grid.yaml'
    head = (f"notebook: evaluate\nout: {root}\nparallel: 2\nparams:\n  checkpoint: {pretrained[1]['checkpoint']}\n  data: {data}\n"
            f"  n_way: 3\n  n_query: 2\n  n_episodes: 10\n")
    grid.write_text(head + "grid:\n  n_shot: [1, 2]\n")
    r = tamt('sweep', grid)
    assert r.returncode == 0, r.stderr[-3000:]
    table = rows_of(root / 'table.csv')
    assert [(t['run'], t['status'], t['n_shot']) for t in table] == [('n_shot=1', 'done', '1'), ('n_shot=2', 'done', '2')]
    assert all(0 <= float(t['acc_mean']) <= 1 for t in table) and (root / 'table.html').is_file()
    assert is_complete(root / 'n_shot=1') and is_complete(root / 'n_shot=2')
    before = {n: snapshot(root / n) for n in ('n_shot=1', 'n_shot=2')}
    r = tamt('sweep', grid, '--parallel', 1)
    assert r.returncode == 0 and r.stdout.count('complete, skipped') == 2
    grid.write_text(head + "grid:\n  n_shot: [1, 2, 9]\n")                      # 9 shots + 2 queries: more videos than a class has
    r = tamt('sweep', grid)
    assert r.returncode == 1 and 'failed: n_shot=9' in r.stdout
    table = rows_of(root / 'table.csv')
    assert [(t['run'], t['status']) for t in table] == [('n_shot=1', 'done'), ('n_shot=2', 'done'), ('n_shot=9', 'failed')]
    assert table[2]['error'] and table[2]['acc_mean'] == '' and table[0]['acc_mean'] != ''
    failed = json.loads((root / 'n_shot=9' / 'failed.json').read_text())
    assert failed['status'] == 'failed' and failed['error'] in table[2]['error']
    executed = nbformat.read(root / 'n_shot=9' / 'evaluate.ipynb', as_version=4)
    assert any(o.get('output_type') == 'error' for c in executed.cells for o in c.get('outputs', []))
    assert not is_complete(root / 'n_shot=9')
    assert {n: snapshot(root / n) for n in before} == before                    # the other runs' folders are untouched


def test_pipeline_refuses_episodes_that_do_not_fit_before_training(data, tmp_path):
    """Every kind of episode the pipeline will draw is checked in the set-up cell: the source-domain episodes, and each target's
    fine-tuning, validation and test episodes; too-small splits fail together, before any pre-training."""
    out = tmp_path / 'p'
    r = tamt('run', 'pipeline', '--out', out, '-p', 'data', data, '-p', 'source', 'pretrain', '-p', 'preset', 'cpu_tiny', '-p', 'model', json.dumps(TINY),
             '-p', 'shots', '[5]', '-p', 'ft_n_query', 5, '-p', 'device', 'cpu')
    assert r.returncode == 1
    assert 'fewer than n_shot + n_query = 10 videos' in r.stderr and 'move_left' in r.stderr
    for what in ('source/test (source-domain episodes, 5-shot)', 'target_a/base (fine-tuning, 5-shot)',
                 'target_b/val (validation, 5-shot)', 'target_b/novel (test, 5-shot) (5-way 5-shot 12-query)'):
        assert what in r.stderr, what
    assert not (out / 'seed0').exists()                                            # nothing trained
