"""Shared test pieces. Checks that need something outside the repository (the released-format reference fixture, a
browser) are skipped with the reason where it is missing, and fail under CI (CI=true), where it must be there."""
import os, socket
from pathlib import Path
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get('TAMT_REFERENCE') or REPO.parent / 'shared' / 'reference')
REFERENCE_FILES = ('official_state_fp16.tar', 'official_episode_ref.pt')


def need(ok: bool, why: str):
    "Skip the test with `why` unless `ok`; under CI, fail instead."
    if ok: return
    if os.environ.get('CI'): pytest.fail(f"{why} (CI=true: this check must run)")
    pytest.skip(why)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def moving_bar(T=30, H=48, W=64, seed=0):
    "A bar sweeping right over textured noise: every frame differs, so frame-index mistakes show."
    rng = np.random.default_rng(seed)
    f = np.repeat(rng.integers(0, 120, (1, H, W, 3), dtype=np.uint8), T, 0)
    for t in range(T): f[t, :, (2 * t) % W:(2 * t) % W + 6] = (250, 220, 30)
    return f


def bad_videos(folder: Path, write_video) -> tuple[Path, dict]:
    """A good 60-frame video and bad files in `folder` (empty, text, random bytes, a truncated H.264 file 'trunc.mp4');
    returns (the good file, {bad file name: the error message every backend must give})."""
    good = write_video(folder / 'good.mp4', moving_bar(T=60))
    (folder / 'empty.mp4').touch()
    (folder / 'text.mp4').write_text('hello')
    (folder / 'random.avi').write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    noise = np.random.default_rng(1).integers(0, 256, (40, 64, 64, 3), dtype=np.uint8)
    data = write_video(folder / 'noise.mp4', noise).read_bytes()
    (folder / 'trunc.mp4').write_bytes(data[:len(data) // 2])
    return good, {'missing.mp4': 'no such file', 'empty.mp4': 'is empty', 'text.mp4': 'cannot be opened', 'random.avi': 'cannot be opened'}


@pytest.fixture(scope='session')
def reference() -> Path:
    "The folder of the released-format reference fixture: $TAMT_REFERENCE, default ../shared/reference beside the repository."
    missing = [f for f in REFERENCE_FILES if not (REFERENCE / f).is_file()]
    need(not missing, f"released-format reference fixture not found: {REFERENCE} lacks {', '.join(missing)} "
                      "(set TAMT_REFERENCE to the folder holding it)")
    return REFERENCE


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: a long test, run when TAMT_TEST_FLAGS names slow (as for the notebooks)')


def pytest_collection_modifyitems(config, items):
    "Tests marked slow are deselected (not skipped) unless TAMT_TEST_FLAGS names 'slow', as nbdev_test leaves out slow cells."
    if 'slow' in os.environ.get('TAMT_TEST_FLAGS', '').split(): return
    slow = [i for i in items if i.get_closest_marker('slow')]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [i for i in items if not i.get_closest_marker('slow')]
