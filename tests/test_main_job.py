"""The data commands, run as a user runs them: the `tamt` console script in a subprocess (the main job, `tamt run pipeline`, is tested in
test_experiments.py: it runs the pipeline notebook)."""
import json, subprocess, sys
from pathlib import Path

TAMT = str(Path(sys.executable).parent / 'tamt')


def run(*args, check=True):
    r = subprocess.run([TAMT, *map(str, args)], capture_output=True, text=True, timeout=600)
    if check: assert r.returncode == 0, r.stderr
    return r


def test_data_episode_end_to_end(tmp_path):
    "`tamt data episode` (the first main job): build, summarise, load one seeded episode."
    root = tmp_path / 'builtin'
    r = run('data', 'episode', '--data-root', root, '--scale', 0.06, '--seed', 3, '--domain', 'target_b', '--out', tmp_path / 'res')
    assert 'target_b  novel  5' in r.stdout and 'episode 0 of seed 3: 5-way 1-shot' in r.stdout
    res = json.loads((tmp_path / 'res' / 'results.json').read_text())
    assert res['shape'] == [5, 3, 3, 16, 64, 64] and len(set(res['classes'])) == 5
    assert res['summary']['source']['train']['classes'] == 36
    # the same seed gives the same episode; the second run reuses the files
    manifest = (root / 'manifest.json').stat().st_mtime_ns
    run('data', 'episode', '--data-root', root, '--scale', 0.06, '--seed', 3, '--domain', 'target_b', '--out', tmp_path / 'r2')
    res2 = json.loads((tmp_path / 'r2' / 'results.json').read_text())
    assert res2['episode'] == res['episode'] and (root / 'manifest.json').stat().st_mtime_ns == manifest


def test_validate_command_lists_bad_videos(tmp_path):
    root = tmp_path / 'builtin'
    run('data', 'build', '--data-root', root, '--scale', 0.06)
    split = root / 'target_a' / 'novel.json'
    names = json.loads(split.read_text())['image_names']
    (root / names[0]).write_bytes(b'broken')
    (root / names[1]).unlink()
    r = run('data', 'validate', split, '--data-root', root, '--out', tmp_path / 'bad', check=False)
    assert r.returncode == 1
    assert f'{names[0].split("/")[-1]}: cannot be opened' in r.stdout and 'missing file' in r.stdout
    assert '2 bad of 15 videos' in r.stdout
    assert len(json.loads((tmp_path / 'bad' / 'bad_videos.json').read_text())) == 2


def test_clear_error_for_bad_root(tmp_path):
    r = run('data', 'validate', tmp_path / 'no.json', check=False)
    assert r.returncode == 2 and 'no such split file' in r.stderr and 'Traceback' not in r.stderr


def test_evaluate_command_on_a_released_checkpoint(tmp_path, reference):
    """The released-format checkpoint evaluated on a released-format split of tiny real videos, in one command. Each class holds
    three copies of one video, so with 2 shots every query sits at distance 0 from its own prototype: 100 % exactly."""
    from conftest import moving_bar
    from tamt.data.video import write_video
    names = [f'/authors/data/cls{k}/v{j}.avi' for k in range(5) for j in range(3)]
    for k in range(5):
        src = write_video(tmp_path / 'src.mp4', moving_bar(T=20, H=120, W=160, seed=k)).read_bytes()
        for j in range(3): p = tmp_path / 'root' / f'cls{k}' / f'v{j}.avi'; p.parent.mkdir(parents=True, exist_ok=True); p.write_bytes(src)
    split = tmp_path / 'novel.json'
    split.write_text(json.dumps({'image_names': names, 'image_labels': [k for k in range(5) for _ in range(3)]}))
    r = run('evaluate', reference / 'official_state_fp16.tar', split, '--data-root', tmp_path / 'root', '--shot', 2,
            '--query', 1, '--episodes', 5, '--out', tmp_path / 'eval')
    assert '5-way 2-shot, 5 episodes:' in r.stdout and '15 clip forwards' in r.stdout
    res = json.loads((tmp_path / 'eval' / 'results.json').read_text())
    assert res['accs'] == [1.0] * 5 and res['acc_mean'] == 1.0
