"Released split files remapped onto a data root; the other sources; their errors."
import json, shutil, subprocess, sys
from pathlib import Path, PurePosixPath
import numpy as np, pytest, torch
from tamt.core import DataError
from tamt.data.video import write_video
from tamt.data.sources import from_split, from_folder, from_list, read_split_file, validate, find_split, RELEASED_SPLITS
from tamt.data.episodes import EpisodeSampler
from tamt.data.datasets import EpisodeDataset, episode_loader
from tamt.data.sampling import SegmentSampler
from tamt.data.transforms import eval_transform
from conftest import moving_bar


@pytest.fixture(scope='module')
def hmdb_tree(tmp_path_factory):
    "hmdb51-molo/novel.json's files as tiny real videos under <root>/hmdb51_org/<class>/<file>."
    split = find_split('hmdb51-molo/novel')
    names, labels = read_split_file(split)
    root = tmp_path_factory.mktemp('data')
    src = {}
    for n, l in zip(names, labels):
        if l not in src: src[l] = write_video(root / 'src' / f'{l}.mp4', moving_bar(T=20 + l, H=40, W=56, seed=l)).read_bytes()
        p = root / 'hmdb51_org' / '/'.join(PurePosixPath(n).parts[-2:])
        p.parent.mkdir(parents=True, exist_ok=True); p.write_bytes(src[l])
    shutil.rmtree(root / 'src')
    return split, root


def test_hmdb_novel_remapped(hmdb_tree):
    split, root = hmdb_tree
    for data_root in (root, root / 'hmdb51_org'):          # the dataset folder or the folder above it
        v = from_split(split, data_root)
        assert len(v) == 1292 and v.n_classes == 10
        assert all(p.exists() for p in v.paths)
        assert 'fencing' in v.classes and len(set(v.classes)) == 10
    assert validate(v.subset(np.arange(0, 1292, 97)), min_frames=16, progress=False) == []
    eps = EpisodeSampler(v, n_way=5, n_shot=5, n_query=12, n_episodes=3, seed=0)
    ds = EpisodeDataset(v, eps, SegmentSampler(16), eval_transform(32))
    for i, (video, labels) in enumerate(episode_loader(ds, num_workers=2)):
        assert video.shape == (5, 17, 3, 16, 32, 32) and torch.isfinite(video).all()
        assert (labels == labels[:, :1]).all() and len(set(labels[:, 0].tolist())) == 5
        # each video's frames carry its class (the tree holds one source clip per class)
        assert labels[:, 0].tolist() == v.labels[eps.episode(i).indices[:, 0]].tolist()


def test_split_errors(hmdb_tree, tmp_path):
    split, root = hmdb_tree
    with pytest.raises(DataError, match='no video of the split exists under data_root') as e: from_split(split, tmp_path)
    assert 'novel.json' in str(e.value)
    with pytest.raises(DataError, match='is not a folder'): from_split(split, tmp_path / 'nope')
    bad = tmp_path / 'bad.json'; bad.write_text('{"image_names": ["a"]}')
    with pytest.raises(DataError, match="bad.json: a split file needs keys"): from_split(bad, root)
    with pytest.raises(DataError, match='no such split file'): from_split(tmp_path / 'none.json', root)
    # a split entry whose file is missing
    names, labels = read_split_file(split)
    part = tmp_path / 'part.json'
    part.write_text(json.dumps({'image_names': names[:5] + ['/x/y/fencing/not_there.avi'], 'image_labels': labels[:6]}))
    with pytest.raises(DataError, match=r'1 of 6 videos are missing, e.g. .*not_there.avi'): from_split(part, root)
    assert len(from_split(part, root, missing='skip').skipped) == 1


# the spec's table (videos / classes of base, val, novel), TAMT.md section 8
SPEC_SIZES = {'hmdb51-molo': [(4280, 31), (1194, 10), (1292, 10)], 'ucf101-molo': [(9154, 70), (1421, 10), (2745, 21)],
              'SSv2Full': [(67013, 64), (1926, 12), (2857, 24)], 'diving48': [(13478, 36), (1632, 6), (2929, 6)],
              'rareact_cut': [(3897, 48), (638, 8), (608, 8)]}


def test_released_splits_ship_with_the_package(tmp_path):
    """Every released split resolves by name from a folder outside the repository (another process, another working directory),
    with the videos and classes of the spec's table, and base, val and novel classes disjoint."""
    code = ("import json; from tamt.data.sources import find_split, read_split_file\n"
            "out = {}\n"
            f"for s in {list(SPEC_SIZES)!r}:\n"
            "    for p in ('base', 'val', 'novel'):\n"
            "        f = find_split(f'{s}/{p}'); names, labels = read_split_file(f)\n"
            "        out[f'{s}/{p}'] = [str(f), len(names), sorted(set(n.split('/')[-2] for n in names))[:3], sorted(set(labels))]\n"
            "print(json.dumps(out))")
    r = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={k: v for k, v in __import__('os').environ.items() if k != 'TAMT_SPLITS'})
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert set(RELEASED_SPLITS) == set(SPEC_SIZES)
    for name, sizes in SPEC_SIZES.items():
        files = {p: got[f'{name}/{p}'] for p in ('base', 'val', 'novel')}
        assert [(n, len(lab)) for _, n, _, lab in files.values()] == sizes, name
        assert all(Path(f).name.endswith('.json.gz') and 'shared' not in Path(f).parts for f, *_ in files.values()), name
    total = sum(Path(f).stat().st_size for f, *_ in got.values())
    assert total < 600_000, total                                                  # compact: about 0.5 MB in all
    # classes are disjoint between base, val and novel (by their folder names, where the set has them)
    hm = {p: {n.split('/')[-2] for n in read_split_file(find_split(f'hmdb51-molo/{p}'))[0]} for p in ('base', 'val', 'novel')}
    assert not (hm['base'] & hm['val']) and not (hm['base'] & hm['novel']) and not (hm['val'] & hm['novel'])


def test_own_split_sets_come_first(tmp_path, monkeypatch):
    own = tmp_path / 'mine' / 'hmdb51-molo'; own.mkdir(parents=True)
    (own / 'novel.json').write_text(json.dumps({'image_names': ['/x/fencing/a.avi'], 'image_labels': [0]}))
    monkeypatch.setenv('TAMT_SPLITS', str(tmp_path / 'mine'))
    assert find_split('hmdb51-molo/novel') == own / 'novel.json'
    assert find_split('hmdb51-molo/base').name == 'base.json.gz'                  # the others: the released ones
    with pytest.raises(DataError, match=r"split 'hmdb51-molo/test': no such split file, nor a split set"):
        find_split('hmdb51-molo/test')


def test_folder_and_list_sources(tmp_path):
    for c in ('b_jump', 'a_run'):
        for i in range(3): write_video(tmp_path / 'tree' / c / f'{i}.mp4', moving_bar(T=10, seed=i))
    v = from_folder(tmp_path / 'tree')
    assert v.classes == ['a_run', 'b_jump'] and v.labels.tolist() == [0, 0, 0, 1, 1, 1]
    (tmp_path / 'l.txt').write_text('tree/a_run/0.mp4 0\ntree/b_jump/2.mp4 1\n')
    assert [p.name for p in from_list(tmp_path / 'l.txt').paths] == ['0.mp4', '2.mp4']
    (tmp_path / 'l2.txt').write_text('tree/a_run/9.mp4 0\n')
    with pytest.raises(DataError, match='1 listed videos are missing'): from_list(tmp_path / 'l2.txt')
    (tmp_path / 'tree' / 'empty_class').mkdir()
    with pytest.raises(DataError, match='class folders without videos: empty_class'): from_folder(tmp_path / 'tree')
