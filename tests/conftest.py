from pathlib import Path
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'


def moving_bar(T=30, H=48, W=64, seed=0):
    "A bar sweeping right over textured noise: every frame differs, so frame-index mistakes show."
    rng = np.random.default_rng(seed)
    f = np.repeat(rng.integers(0, 120, (1, H, W, 3), dtype=np.uint8), T, 0)
    for t in range(T): f[t, :, (2 * t) % W:(2 * t) % W + 6] = (250, 220, 30)
    return f


@pytest.fixture
def shared():
    if not SHARED.exists(): pytest.fail(f"{SHARED} is missing: the tests need the project's shared/ folder beside the repository")
    return SHARED
