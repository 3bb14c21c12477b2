"""`backend='auto'` on a machine without decord (no wheels for some platforms; the GPU image .ci/gpu runs on): a fresh
process in which decord and torchcodec cannot be imported decodes a real file with PyAV, frame for frame as PyAV does here."""
import json, subprocess, sys
import numpy as np
from tamt.data.video import read_frames, write_video
from conftest import moving_bar

HIDE = "import sys\nfor n in {names!r}: sys.modules[n] = None\n"
READ = """
from tamt.data.video import default_backend, available_backends, read_frames
import json, numpy as np
f = read_frames({path!r}, np.arange(0, 12, 3))
print(json.dumps(dict(backend=default_backend(), available=list(available_backends()), shape=list(f.shape), sum=int(f.astype(np.int64).sum()), first=f[0, :4, :4].tolist())))
"""


def _auto_in_fresh_process(path, hidden) -> dict:
    code = HIDE.format(names=tuple(hidden)) + READ.format(path=str(path))
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_auto_without_decord_reads_with_pyav(tmp_path):
    path = write_video(tmp_path / 'bar.mp4', moving_bar(12, 48, 64), fps=15)
    ref = read_frames(path, np.arange(0, 12, 3), backend='pyav')
    got = _auto_in_fresh_process(path, ['decord', 'torchcodec'])
    assert got['backend'] == 'pyav' and got['available'] == ['pyav']
    assert got['shape'] == list(ref.shape)
    assert got['sum'] == int(ref.astype(np.int64).sum()) and got['first'] == ref[0, :4, :4].tolist()


def test_auto_with_decord_keeps_decord(tmp_path):
    "Without torchcodec but with decord, 'auto' still means decord (the fallback only applies where decord is missing)."
    path = write_video(tmp_path / 'bar.mp4', moving_bar(12, 48, 64), fps=15)
    assert _auto_in_fresh_process(path, ['torchcodec'])['backend'] == 'decord'
