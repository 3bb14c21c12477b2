"""The torchcodec backend on real files, decoded by the real decoders: the same frames as PyAV and decord at native size,
the same frame counts and rates, errors that name the file, scaled frames within resize rounding. Skipped, with the reason,
where torchcodec is not usable (not installed, or no FFmpeg shared libraries); under CI it must be."""
import numpy as np, pytest
from tamt.core import VideoError
from tamt.data.video import (read_frames, open_video, write_video, video_info, available_backends, default_backend,
                             resolve_backend, torchcodec_problem)
from conftest import moving_bar, need, bad_videos

TC = 'torchcodec'


@pytest.fixture(autouse=True)
def _torchcodec_here():
    need(TC in available_backends(), f"torchcodec is not usable here: {torchcodec_problem()}")


@pytest.fixture(scope='module')
def builtin_files(tmp_path_factory):
    "A small build of the built-in dataset's target_a domain (64x64 H.264, 24-40 frames, as the full one)."
    need(TC in available_backends(), f"torchcodec is not usable here: {torchcodec_problem()}")
    from tamt.data.synthetic import build_builtin
    root = build_builtin(tmp_path_factory.mktemp('d') / 'builtin', scale=0.02, domains=['target_a'], n_workers=1, progress=False)
    files = sorted(root.rglob('*.mp4'))
    assert len(files) >= 10
    return files


def test_auto_picks_torchcodec():
    "Where torchcodec loads, it decodes the check clips exactly and `backend='auto'` (the default) uses it."
    assert torchcodec_problem() is None
    assert default_backend() == resolve_backend('auto') == TC
    assert resolve_backend('decord') == 'decord'


@pytest.mark.parametrize('name,codec,hw', [('a.mp4', 'libx264', (60, 80)), ('b.avi', 'mpeg4', (60, 80)), ('c.mkv', 'libx264', (60, 80)),
                                           ('d.webm', 'libvpx', (60, 80)), ('e.mp4', 'libx264', (64, 96)), ('f.mp4', 'libx264', (32, 48))])
def test_same_frames_as_pyav_and_decord(tmp_path, name, codec, hw):
    "A moving bar in four containers/codecs, widths taking swscale (96) and FFmpeg's filter graph (80, 48): identical frames."
    H, W = hw
    T = min(37, W // 2)                                              # the bar moves 2 px a frame: no position twice
    frames = moving_bar(T=T, H=H, W=W)
    fn = write_video(tmp_path / name, frames, codec=codec)
    idx = [T - 1, 0, 1, 5, 5, 18, 2]
    t, p, d = (read_frames(fn, idx, b) for b in (TC, 'pyav', 'decord'))
    assert t.shape == (7, H, W, 3) and t.dtype == np.uint8
    np.testing.assert_array_equal(t, p); np.testing.assert_array_equal(t, d)
    info = video_info(fn, TC)
    assert info == video_info(fn, 'pyav') == video_info(fn, 'decord')
    assert (info['num_frames'], info['fps'], info['height'], info['width']) == (T, 15.0, H, W)
    # the right frames: each decoded frame is closest to the written frame of its index (lossy codecs)
    err = np.abs(t[:, None].astype(int) - frames[None]).mean(axis=(2, 3, 4))
    assert err.argmin(1).tolist() == idx


def test_builtin_files_every_frame(builtin_files):
    "Every frame of every file of a built-in build: torchcodec equals PyAV and decord; same counts and rates."
    for fn in builtin_files:
        info = video_info(fn, 'pyav')
        assert video_info(fn, TC) == info == video_info(fn, 'decord'), fn
        idx = np.arange(info['num_frames'])
        t = read_frames(fn, idx, TC)
        np.testing.assert_array_equal(t, read_frames(fn, idx, 'pyav'), err_msg=str(fn))
        np.testing.assert_array_equal(t, read_frames(fn, idx, 'decord'), err_msg=str(fn))


def test_one_reader_many_reads(builtin_files):
    "One open reader serving several `get`s, forwards and backwards, as `FrameReader` uses it."
    fn = builtin_files[0]
    ref = read_frames(fn, range(20), 'pyav')
    with open_video(fn, TC) as v:
        for ix in ([0, 1, 2], [19, 3, 3], [10], list(range(20))[::-1], []):
            out = v.get(ix)
            assert out.shape == (len(ix), 64, 64, 3)
            np.testing.assert_array_equal(out, ref[ix])


@pytest.mark.parametrize('short_side', [32, 48, 60])
def test_scaled_within_resize_rounding(builtin_files, tmp_path, short_side):
    """torchcodec scales after converting to RGB, PyAV and decord before: same sizes, pixels within resize rounding of PyAV
    on the built-in files (mean |difference| under 3 of 255, as decord against PyAV in test_video). Its scaled frames are an
    antialiased bilinear resize of its native frames (torchvision's, within 3), each nearest to its own frame on the moving
    bar (some built-in classes barely move, so that check uses the bar)."""
    import torch
    import torchvision.transforms.v2.functional as F
    for fn in builtin_files[::4]:
        idx = np.arange(video_info(fn)['num_frames'])
        t, p = read_frames(fn, idx, TC, short_side), read_frames(fn, idx, 'pyav', short_side)
        assert t.shape == p.shape and min(t.shape[1:3]) == short_side
        assert np.abs(t.astype(int) - p).mean() < 3.0, (fn, np.abs(t.astype(int) - p).mean())
    bar = write_video(tmp_path / 'bar.mp4', moving_bar(T=20, H=120, W=160))
    t, nat = read_frames(bar, range(20), TC, short_side), read_frames(bar, range(20), TC)
    ref = F.resize(torch.from_numpy(nat).permute(0, 3, 1, 2), list(t.shape[1:3]), antialias=True).permute(0, 2, 3, 1).numpy()
    err = np.abs(t[:, None].astype(int) - ref[None]).mean(axis=(2, 3, 4))     # every scaled frame against every reference
    assert np.diag(err).mean() < 3.0, np.diag(err).mean()
    assert err.argmin(1).tolist() == list(range(20))                           # and nearest to its own frame


def test_scaled_sizes_as_decord(builtin_files, tmp_path):
    fn = write_video(tmp_path / 'tall.mp4', moving_bar(T=8, H=100, W=60))
    for f in (builtin_files[0], fn):
        for s in (32, 48, 50):
            assert read_frames(f, [0], TC, s).shape == read_frames(f, [0], 'decord', s).shape == read_frames(f, [0], 'pyav', s).shape


def test_bad_files(tmp_path):
    "The same errors as the other backends (tests/test_video.py): each names the file and says what is wrong."
    good, cases = bad_videos(tmp_path, write_video)
    for name, msg in cases.items():
        with pytest.raises(VideoError, match=msg) as e: read_frames(tmp_path / name, [0], TC)
        assert name in str(e.value)
        assert '.cpp:' not in str(e.value)                           # torchcodec's source location is dropped
    v = open_video(tmp_path / 'trunc.mp4', TC)
    assert v.num_frames == 40                                        # the header's count, as decord and PyAV
    with pytest.raises(VideoError, match='trunc.mp4.*truncated'): v.get(range(v.num_frames))
    with pytest.raises(VideoError, match='has 60 frames'): read_frames(good, [59, 60], TC)
    with pytest.raises(VideoError, match='has 60 frames'): read_frames(good, [-1], TC)
    with pytest.raises(VideoError, match='is a folder'): read_frames(tmp_path, [0], TC)


def test_truncated_matroska_reads_shorter(tmp_path):
    "A cut Matroska file (no frame count in its header) reads as a shorter video, its frames those of the whole file."
    noise = np.random.default_rng(1).integers(0, 256, (40, 64, 64, 3), dtype=np.uint8)
    whole = write_video(tmp_path / 'noise.mkv', noise)
    data = whole.read_bytes()
    cut = tmp_path / 'cut.mkv'; cut.write_bytes(data[:len(data) // 2])
    n = video_info(cut, TC)['num_frames']
    assert 5 < n < 40
    np.testing.assert_array_equal(read_frames(cut, range(n), TC), read_frames(whole, range(n), 'pyav'))
