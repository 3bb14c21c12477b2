"Decoding real files with both backends: the same frames for the same indices; bad files named."
import numpy as np, pytest
from tamt.core import VideoError
from tamt.data.video import read_frames, open_video, write_video, video_info, BACKENDS
from conftest import moving_bar, bad_videos


@pytest.mark.parametrize('name,codec', [('a.mp4', 'libx264'), ('b.avi', 'mpeg4'), ('c.mkv', 'libx264'), ('d.webm', 'libvpx')])
def test_backends_agree(tmp_path, name, codec):
    frames = moving_bar(T=37, H=60, W=80)
    fn = write_video(tmp_path / name, frames, codec=codec)
    info = video_info(fn)
    assert (info['num_frames'], info['height'], info['width']) == (37, 60, 80)
    idx = [0, 1, 5, 5, 18, 36]
    a, b = read_frames(fn, idx, 'decord'), read_frames(fn, idx, 'pyav')
    assert a.shape == (6, 60, 80, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    # the right frames: each decoded frame is closest to the written frame of its index (lossy codecs)
    err = np.abs(a[:, None].astype(int) - frames[None]).mean(axis=(2, 3, 4))
    assert err.argmin(1).tolist() == idx


def test_backends_agree_scaled(tmp_path):
    fn = write_video(tmp_path / 'v.mp4', moving_bar(T=20, H=120, W=160))
    a, b = read_frames(fn, [3, 9], 'decord', short_side=60), read_frames(fn, [3, 9], 'pyav', short_side=60)
    assert a.shape == b.shape == (2, 60, 80, 3)
    assert np.abs(a.astype(int) - b).mean() < 3.0   # scaler rounding; another frame differs by ~40


def test_unsorted_and_repeated_indices(tmp_path):
    frames = moving_bar(T=25)
    fn = write_video(tmp_path / 'v.mp4', frames)
    fwd = read_frames(fn, [2, 10, 20])
    rev = read_frames(fn, [20, 10, 2, 2])
    np.testing.assert_array_equal(rev[:3], fwd[::-1]); np.testing.assert_array_equal(rev[3], fwd[0])


@pytest.mark.parametrize('backend', BACKENDS)
def test_bad_files(tmp_path, backend):
    good, cases = bad_videos(tmp_path, write_video)
    for name, msg in cases.items():
        with pytest.raises(VideoError, match=msg) as e: read_frames(tmp_path / name, [0], backend)
        assert name in str(e.value)
    with pytest.raises(VideoError, match='trunc.mp4'):
        v = open_video(tmp_path / 'trunc.mp4', backend); v.get(range(v.num_frames))
    with pytest.raises(VideoError, match='has 60 frames'): read_frames(good, [59, 60], backend)
    with pytest.raises(VideoError, match='is a folder'): read_frames(tmp_path, [0], backend)
