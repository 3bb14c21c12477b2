"The short-video rule, end to end through a real file."
import numpy as np, pytest
from tamt.core import VideoError, rng_for
from tamt.data.video import write_video
from tamt.data.reader import FrameReader
from tamt.data.sampling import SegmentSampler, StrideSampler
from conftest import moving_bar


def test_short_video_repeats_frames(tmp_path):
    fn = write_video(tmp_path / 'short.mp4', moving_bar(T=6))
    for s in (SegmentSampler(16), SegmentSampler(16, train=True), StrideSampler(16, 4)):
        frames, idx = FrameReader().read(fn, s, rng_for(0))
        assert frames.shape[0] == 16 and set(idx.tolist()) == set(range(6)) and (np.diff(idx) >= 0).all()


def test_short_video_error_policy(tmp_path):
    fn = write_video(tmp_path / 'short.mp4', moving_bar(T=6))
    with pytest.raises(VideoError, match=r'short.mp4: has 6 frames but 16 segments need at least 16'):
        FrameReader().read(fn, SegmentSampler(16, short='error'), rng_for(0))
    with pytest.raises(VideoError, match=r'needs 61'):
        FrameReader().read(fn, StrideSampler(16, 4, short='error'), rng_for(0))
