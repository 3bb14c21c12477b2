"Episodes: counts, disjointness, determinism across worker counts; small classes; skip-and-report with workers."
import numpy as np, pytest, torch
from tamt.core import DataError, VideoError
from tamt.data.video import write_video
from tamt.data.sources import VideoList
from tamt.data.episodes import EpisodeSampler
from tamt.data.datasets import EpisodeDataset, ClipDataset, episode_loader, clip_loader, SkipReport
from tamt.data.sampling import SegmentSampler
from tamt.data.transforms import train_transform
from conftest import moving_bar


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp('eps')
    paths, labels = [], []
    for k in range(7):
        for j in range(5 if k < 6 else 3):                       # class 6 is small
            paths.append(write_video(root / f'k{k}' / f'{j}.mp4', moving_bar(T=12 + j, H=32, W=40, seed=10 * k + j))); labels.append(k)
    return VideoList(paths, labels, [f'k{k}' for k in range(7)], name='tree')


def test_sampler_counts_and_disjointness():
    labels = np.repeat(np.arange(10), 30)
    s = EpisodeSampler(labels, n_way=5, n_shot=5, n_query=12, n_episodes=200, seed=3)
    seen = set()
    for flat in s:
        e = np.array(flat).reshape(5, 17)
        assert len(set(flat)) == 85 and len(set(labels[e[:, 0]])) == 5 and (labels[e] == labels[e[:, :1]]).all()
        seen |= set(labels[e[:, 0]].tolist())
    assert seen == set(range(10))                                # every class takes part


def test_same_episodes_any_worker_count(tree):
    eps = EpisodeSampler(tree, n_way=3, n_shot=2, n_query=2, n_episodes=5, seed=11, small_classes='skip')
    ds = EpisodeDataset(tree, eps, SegmentSampler(8, train=True), train_transform(24, flip=True))
    runs = [[(v.clone(), l.clone()) for v, l in episode_loader(ds, num_workers=w)] for w in (0, 1, 2)]
    for r in runs[1:]:
        for a, b in zip(runs[0], r):                         # the same clips (floats from another process: within rounding)
            assert torch.equal(a[1], b[1]); torch.testing.assert_close(a[0], b[0], rtol=0, atol=1e-6)
    assert runs[0][0][0].shape == (3, 4, 3, 8, 24, 24)


def test_small_class_named(tree):
    with pytest.raises(DataError, match=r'k6 \(3\)'): EpisodeSampler(tree, n_way=3, n_shot=2, n_query=2)
    with pytest.raises(DataError, match='7 classes have fewer than n_shot'): EpisodeSampler(tree, n_way=3, n_shot=5, n_query=1)
    with pytest.raises(DataError, match='only 0 of 7 classes'): EpisodeSampler(tree, n_way=3, n_shot=5, n_query=1, small_classes='skip')


def test_skip_and_report_with_workers(tree, tmp_path):
    paths = list(tree.paths)
    bad = tmp_path / 'bad.mp4'; bad.write_bytes(b'\x00' * 100)
    paths[1] = bad
    v = VideoList(paths, tree.labels, tree.classes, 'with-bad')
    report = tmp_path / 'skipped.jsonl'
    ds = ClipDataset(v, SegmentSampler(8, train=True), train_transform(24), on_error='skip', report=report)
    n = 0
    for xb, yb in clip_loader(ds, batch_size=4, num_workers=2, drop_last=False):
        assert torch.isfinite(xb).all(); n += len(yb)
    assert n == len(v)
    rows = SkipReport(report).rows()
    assert [r['path'] for r in rows] == [str(bad)] and rows[0]['label'] == 0
    strict = ClipDataset(v, SegmentSampler(8), train_transform(24))
    with pytest.raises(VideoError, match='bad.mp4'): strict[1]


def test_skip_gives_up(tree, tmp_path):
    paths = list(tree.paths)
    for i in range(5): paths[i] = tmp_path / f'gone{i}.mp4'        # all of class 0 missing
    v = VideoList(paths, tree.labels, tree.classes, 'broken-class')
    ds = ClipDataset(v, SegmentSampler(8), train_transform(24), on_error='skip', report=tmp_path / 'r.jsonl', max_skips=3)
    with pytest.raises(DataError, match="gave up after 4 bad videos of class 'k0'"): ds[0]
    assert len(SkipReport(tmp_path / 'r.jsonl').rows()) == 4
