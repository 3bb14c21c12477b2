"""A clean room, as a new user has it: the repository cloned into an empty temporary folder (nothing beside it: no
../shared), installed from the clone as a regular (not editable) package into a fresh virtual environment, and used from a
folder outside the clone with a fresh home folder. It checks what must work anywhere: the `tamt` command, the built-in
dataset written to the user's data home (not into the package), the released split files shipped in the package and found
by name, and an evaluation of a released split set on a tiny tree of real videos remapped onto it.

The default test reuses this environment's installed dependencies (torch and friends, through a .pth line; tamt itself
comes only from the clone); the slow one installs every dependency into the fresh environment too."""
import json, os, subprocess, sys
from pathlib import Path, PurePosixPath
import pytest
from conftest import REPO, moving_bar

TINY = dict(embed_dim=32, depth=1, num_heads=1, img_size=32, num_frames=4, groups=2, taa_blocks=1)


def sh(*cmd, cwd=None, env=None, timeout=900):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


def room(tmp_path, own_deps: bool):
    "Clone, fresh venv, install; returns (venv python, tamt command, environment for the user's commands, work folder)."
    top = tmp_path / 'room'; top.mkdir()
    clone = top / 'tamt'
    sh('git', 'clone', '--quiet', '--no-hardlinks', REPO, clone)
    assert not (top / 'shared').exists() and not (clone.parent / 'shared').exists()
    venv = top / 'venv'
    sh(sys.executable, '-m', 'venv', venv)
    py = venv / 'bin' / 'python'
    if own_deps:
        sh(py, '-m', 'pip', 'install', '-q', 'torch==' + __import__('torch').__version__.split('+')[0], clone, timeout=1800)
    else:
        site = next((venv / 'lib').glob('python*/site-packages'))
        (site / '_tamt_test_deps.pth').write_text(next(p for p in sys.path if p.endswith('site-packages')) + '\n')
        sh(py, '-m', 'pip', 'install', '-q', '--no-deps', '--no-build-isolation', '--no-index', clone)
    work, home = top / 'work', top / 'home'; work.mkdir(); home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith('TAMT_') and k not in ('PYTHONPATH', 'VIRTUAL_ENV')}
    env.update(HOME=str(home), PATH=f"{venv / 'bin'}:{env.get('PATH', '')}", XDG_CACHE_HOME=str(home / '.cache'))
    where = sh(py, '-c', 'import tamt, tamt.core; print(tamt.__file__); print(tamt.core.PROJECT)', cwd=work, env=env).stdout.split()
    assert Path(where[0]).is_relative_to(venv) and where[1] == 'None', where        # the installed package, not a checkout
    return py, venv / 'bin' / 'tamt', env, work


def use(py, tamt, env, work, tmp_path):
    # the data check: the built-in dataset goes to the user's data home
    r = sh(tamt, 'data', 'episode', '--scale', 0.06, '--seed', 1, '--domain', 'target_b', '--out', work / 'ep', cwd=work, env=env)
    assert 'episode 0 of seed 1: 5-way 1-shot' in r.stdout
    built = Path(env['HOME']) / '.cache' / 'tamt' / 'builtin'
    assert json.loads((work / 'ep' / 'results.json').read_text())['root'] == str(built) and (built / 'manifest.json').is_file()
    assert not list(Path(py).parents[1].rglob('manifest.json'))                       # nothing written into the environment
    # a released split set by name: hmdb51-molo/novel remapped onto a tiny tree of real videos, one clip per class copied
    sys.path.insert(0, str(REPO)); from tamt.data.video import write_video
    from tamt.data.sources import read_split_file, find_split
    names, labels = read_split_file(find_split('hmdb51-molo/novel'))
    tree, src = work / 'hmdb51', {}
    for n, l in zip(names, labels):
        if l not in src: src[l] = write_video(tmp_path / f'src{l}.mp4', moving_bar(T=12, H=40, W=40, seed=l)).read_bytes()
        p = tree / '/'.join(PurePosixPath(n).parts[-2:]); p.parent.mkdir(parents=True, exist_ok=True); p.write_bytes(src[l])
    sh(py, '-c', f"import tamt; tamt.save_checkpoint(tamt.HTTN(**{TINY!r}), 'tiny.pt')", cwd=work, env=env)
    ev = lambda: subprocess.run([str(tamt), 'evaluate', 'tiny.pt', 'hmdb51-molo/novel', '--data-root', str(tree), '--shot', '2', '--query', '1',
                                 '--episodes', '5', '--out', 'ev'], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    r = ev()
    assert r.returncode == 0, r.stderr[-3000:]
    assert '5-way 2-shot, 5 episodes:' in r.stdout
    res = json.loads((work / 'ev' / 'results.json').read_text())
    assert res['accs'] == [1.0] * 5, res['accs']                   # each query at distance 0 from its own class's prototype
    gone = tree / '/'.join(PurePosixPath(names[7]).parts[-2:]); gone.unlink()
    r = ev()                                                        # a missing video: named, no traceback
    assert r.returncode == 2 and '1 of 1292 videos are missing' in r.stderr and gone.name in r.stderr and 'Traceback' not in r.stderr
    r = sh(tamt, 'run', 'evaluate', '--show', cwd=work, env=env)   # the experiment notebooks came with the package
    assert 'n_shot' in r.stdout and 'share/tamt/experiments/evaluate.ipynb' in r.stdout


def test_clean_room(tmp_path):
    use(*room(tmp_path, own_deps=False), tmp_path)


@pytest.mark.slow
def test_clean_room_own_dependencies(tmp_path):
    use(*room(tmp_path, own_deps=True), tmp_path)
