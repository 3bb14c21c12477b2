"""A pre-training run on a file system that fills up: run inside a private mount namespace (`unshare -rm` or `unshare -m`),
where it mounts a small tmpfs. Prints one JSON line with what happened; tests/test_pretrain.py asserts on it.

    python tests/disk_full.py DATA_ROOT WORK_DIR

1. An uninterrupted run of 10 SSL steps elsewhere gives the reference weights and the checkpoint's size.
2. The same run in a tmpfs with room for one checkpoint and not two: the checkpoint of step 5 is written, the one of
   step 10 (written beside it, then renamed) does not fit.
3. The tmpfs grows (the user frees space) and the same command runs again: it resumes from step 5."""
import json, subprocess, sys
from pathlib import Path
import torch
from tamt.core import WriteError
from tamt.pretrain.run import preset, pretrain_ssl

TINY = dict(model=dict(embed_dim=64, depth=2, num_heads=1, img_size=32, num_frames=4, groups=2, taa_blocks=1), decoder_dim=32,
            decoder_heads=1, num_workers=0, decode_short_side=32, progress=False, amp='fp32')


def main(data, work):
    work = Path(work); cfg = preset('cpu_tiny', data_root=data, ssl_epochs=4, ssl_batch=4, ckpt_every=5, log_every=1, max_steps=10, **TINY)
    pretrain_ssl(work/'ref', cfg)
    ref = work/'ref'/'ssl'/'checkpoints'/'last.pt'
    size = ref.stat().st_size
    small = work/'small'; small.mkdir()
    subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={int(1.5 * size) + (64 << 10)}', 'tmpfs', str(small)], check=True)
    out = dict(checkpoint_bytes=size)
    try:
        pretrain_ssl(small/'run', cfg)
        out['error'] = None
    except WriteError as e:
        out.update(error=str(e), error_type=type(e).__name__)
    last = small/'run'/'ssl'/'checkpoints'/'last.pt'
    out['kept_step'] = torch.load(last, weights_only=True)['step'] if last.exists() else None
    out['left_over'] = sorted(p.name for p in last.parent.iterdir() if p.name != 'last.pt')
    subprocess.run(['mount', '-o', f'remount,size={20 * size}', str(small)], check=True)
    pretrain_ssl(small/'run', cfg)                                         # the same command again
    a, b = torch.load(ref, weights_only=True), torch.load(last, weights_only=True)
    out['resumed_step'] = b['step']
    out['identical'] = a['model'].keys() == b['model'].keys() and all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])
    rows = [json.loads(l) for l in (small/'run'/'ssl'/'metrics.jsonl').read_text().splitlines()]
    out['logged_steps'] = [r['step'] for r in rows]
    out['losses_equal'] = [r['loss'] for r in rows] == [json.loads(l)['loss'] for l in (work/'ref'/'ssl'/'metrics.jsonl').read_text().splitlines()]
    subprocess.run(['umount', str(small)], check=False)
    print(json.dumps(out))


if __name__ == '__main__': main(*sys.argv[1:])
