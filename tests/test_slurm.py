"""Sweeps beyond one machine, without a cluster. `--launcher submitit-local` (submitit's local executor, the jobs a SLURM
sweep submits, run as processes here) gives the local sweep's table, keeps a failed run and skips complete ones.
`--launcher slurm` against stand-in `sbatch`, `srun` and `sacct` commands: the sweep file's and the command line's
options reach the sbatch script of one job array, a queued or running job is waited for rather than submitted twice,
and a job that ends without a result is a failed run, kept and reported."""
import csv, json, os, stat
from importlib.util import find_spec
import pytest
from tamt.cli import main
from tamt.experiments import is_complete, run_sweep

if find_spec('submitit') is None:                     # a dev requirement: skipped where missing, a failure under CI
    if os.environ.get('CI'): raise ImportError('submitit is not installed (CI=true: these checks must run)')
    pytest.skip('submitit is not installed (pip install submitit)', allow_module_level=True)

TINY = dict(embed_dim=64, depth=2, num_heads=1, img_size=32, num_frames=4, groups=2, taa_blocks=1)


def quiet(*a, **k): pass


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    "A small built-in dataset: 3 novel classes of 4 videos on one target domain."
    from tamt.data.synthetic import build_builtin
    return build_builtin(tmp_path_factory.mktemp('data') / 'builtin', scale=0.08, domains=['target_a'], classes_per_split=3, progress=False)


def head(data, out, launcher='local', parallel=1) -> str:
    "A sweep file's head: the evaluate notebook on a tiny random model (seeded), 10 episodes, on the CPU."
    return (f"notebook: evaluate\nout: {out}\nlauncher: {launcher}\nparallel: {parallel}\nparams:\n  data: {data}\n  n_way: 3\n"
            f"  n_query: 2\n  n_episodes: 10\n  device: cpu\n  seed: 3\n  model: {json.dumps(TINY)}\n")


@pytest.fixture(scope='module')
def sweeps(data, tmp_path_factory):
    "The same 2-run sweep (n_shot 1 and 2) run locally and as submitit-local jobs (2 at once)."
    tmp = tmp_path_factory.mktemp('sweeps')
    (tmp / 'grid.yaml').write_text(head(data, tmp / 'local') + "grid:\n  n_shot: [1, 2]\n")
    local = run_sweep(tmp / 'grid.yaml', log=quiet)
    (tmp / 'grid.yaml').write_text(head(data, tmp / 'sub', 'submitit-local', 2) + "grid:\n  n_shot: [1, 2]\n")
    sub = run_sweep(tmp / 'grid.yaml', log=quiet, progress=False)
    return tmp, local, sub


@pytest.mark.slow
def test_submitit_local_gives_the_local_table(sweeps):
    "4 papermill runs of the evaluate notebook (about 90 s on 2 busy CPU cores)."
    tmp, local, sub = sweeps
    assert [(r['run'], r['status'], r['n_shot']) for r in local] == [('n_shot=1', 'done', 1), ('n_shot=2', 'done', 2)], local
    assert [(r['run'], r['status'], r['n_shot']) for r in sub] == [('n_shot=1', 'done', 1), ('n_shot=2', 'done', 2)], sub
    assert [list(r) for r in sub] == [list(r) for r in local]                         # the same columns in the same order
    for a, b in zip(local, sub):                                                      # the same numbers: same seeds, same computation
        for k in a:
            if k == 'seconds': continue
            assert b[k] == (pytest.approx(a[k], rel=1e-6, abs=1e-9) if isinstance(a[k], float) else a[k]), k
    assert 0 <= sub[0]['acc_mean'] <= 1 and sub[0]['acc_ci95'] > 0
    rows = lambda d: [{k: v for k, v in r.items() if k != 'seconds'} for r in csv.DictReader(open(d / 'table.csv'))]
    assert rows(tmp / 'sub') == rows(tmp / 'local')                                  # one table, written the same way
    jobs = json.loads((tmp / 'sub' / 'jobs.json').read_text())
    for n in ('n_shot=1', 'n_shot=2'):
        assert jobs[n]['launcher'] == 'submitit-local' and is_complete(tmp / 'sub' / n)
        assert list((tmp / 'sub' / 'submitit' / jobs[n]['job_id']).glob('*_log.out'))  # submitit's logs, in the sweep folder


@pytest.mark.slow
def test_submitit_local_keeps_a_failure_and_skips_complete_runs(sweeps, data, capsys):
    "`tamt sweep --launcher submitit-local` on the same folder with a third value that fails (9 shots + 2 queries > 4 videos)."
    tmp = sweeps[0]
    grid = tmp / 'more.yaml'
    grid.write_text(head(data, tmp / 'sub') + "grid:\n  n_shot: [1, 2, 9]\n")
    stamps = {n: (tmp / 'sub' / n / 'done.json').stat().st_mtime_ns for n in ('n_shot=1', 'n_shot=2')}
    assert main(['sweep', str(grid), '--launcher', 'submitit-local']) == 1
    out = capsys.readouterr().out
    assert out.count('complete, skipped') == 2 and 'failed: n_shot=9' in out
    table = list(csv.DictReader(open(tmp / 'sub' / 'table.csv')))
    assert [(t['run'], t['status']) for t in table] == [('n_shot=1', 'done'), ('n_shot=2', 'done'), ('n_shot=9', 'failed')]
    assert table[2]['error'] and table[2]['acc_mean'] == '' and table[0]['acc_mean'] != ''
    failed = json.loads((tmp / 'sub' / 'n_shot=9' / 'failed.json').read_text())
    assert failed['status'] == 'failed' and failed['error'] in table[2]['error'] and (tmp / 'sub' / 'n_shot=9' / 'evaluate.ipynb').is_file()
    assert {n: (tmp / 'sub' / n / 'done.json').stat().st_mtime_ns for n in stamps} == stamps   # not run again


FAKE = {'sbatch': '''#!/bin/sh
d=$(dirname "$0"); n=$(( $(cat "$d/next_id") + 1 )); echo $n > "$d/next_id"
cp "$1" "$d/sbatch_$n.sh"; echo "Submitted batch job $n"
''', 'srun': '#!/bin/sh\nexit 1\n', 'sacct': '''#!/bin/sh
d=$(dirname "$0"); echo 'JobID|State|NodeList'; cat "$d/sacct.txt" 2>/dev/null
if [ -f "$d/default_state" ]; then while [ $# -gt 0 ]; do [ "$1" = -j ] && echo "$2|$(cat "$d/default_state")|"; shift; done; fi
'''}


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    "Stand-in sbatch (keeps the script, answers job 4242, 4243, ...), srun and sacct (states from sacct.txt, else default_state)."
    import submitit
    b = tmp_path / 'bin'; b.mkdir()
    for name, text in FAKE.items():
        (b / name).write_text(text); (b / name).chmod((b / name).stat().st_mode | stat.S_IXUSR)
    (b / 'next_id').write_text('4241\n')
    monkeypatch.setenv('PATH', f"{b}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(submitit.SlurmJob, '_results_timeout_s', 0)                  # no shared file system to wait for here
    monkeypatch.setattr(submitit.SlurmJob, 'watcher', type(submitit.SlurmJob.watcher)(delay_s=600))   # a fresh sacct cache
    return b


def test_slurm_options_reach_sbatch_and_jobs_are_not_submitted_twice(fake_slurm, tmp_path, capsys):
    b, root, data = fake_slurm, tmp_path / 'sweep', tmp_path / 'data'                 # nothing runs: no data needed
    grid = tmp_path / 'grid.yaml'
    grid.write_text(head(data, root, 'slurm', 1) + "grid:\n  n_shot: [1, 2]\nslurm:\n  partition: gpu\n  time: '2:00:00'\n  gpus: 1\n"
                    "  cpus: 4\n  mem: 16G\n  additional: {reservation: r1}\n")
    assert main(['sweep', str(grid), '--no-wait', '--mem', '32G', '--slurm', 'account=proj', '--slurm', 'mail_type=END']) == 0
    script = (b / 'sbatch_4242.sh').read_text()                                      # one job array of both runs, one at a time
    for line in ('--job-name=tamt-sweep', '--partition=gpu', '--time=120', '--gpus-per-node=1', '--cpus-per-task=4', '--mem=32GB',
                 '--array=0-1%1', '--account=proj', '--reservation=r1', '--mail-type=END', f"--output={root / 'submitit'}/%A_%a/"):
        assert f'#SBATCH {line}' in script, line
    assert '-u -m submitit.core._submit' in script
    jobs = json.loads((root / 'jobs.json').read_text())
    assert {n: j['job_id'] for n, j in jobs.items()} == {'n_shot=1': '4242_0', 'n_shot=2': '4242_1'}
    assert [(t['run'], t['status']) for t in csv.DictReader(open(root / 'table.csv'))] == [('n_shot=1', 'pending'), ('n_shot=2', 'pending')]
    capsys.readouterr()
    (b / 'sacct.txt').write_text('4242_0|PENDING|\n4242_1|RUNNING|node7\n')            # queued and running: wait for them
    assert main(['sweep', str(grid), '--no-wait']) == 0
    out = capsys.readouterr().out
    assert 'n_shot=1: job 4242_0 is still queued or running' in out and 'n_shot=2: job 4242_1 is still queued' in out
    assert (b / 'next_id').read_text().strip() == '4242'                               # nothing submitted
    (b / 'sacct.txt').write_text('4242_0|CANCELLED by 1000|\n4242_1|RUNNING|node7\n')   # the cancelled one is submitted again
    assert main(['sweep', str(grid), '--no-wait']) == 0
    assert (b / 'next_id').read_text().strip() == '4243' and '--array' not in (b / 'sbatch_4243.sh').read_text()
    assert json.loads((root / 'jobs.json').read_text())['n_shot=1']['job_id'] == '4243'


def test_slurm_job_without_a_result_is_a_failed_run(fake_slurm, tmp_path, capsys):
    "The command waits for its job; one that ends without a result (sacct: TIMEOUT) is a failed run, kept with its job and reported."
    b, root, data = fake_slurm, tmp_path / 'sweep', tmp_path / 'data'
    grid = tmp_path / 'grid.yaml'
    grid.write_text(head(data, root, 'slurm') + "grid:\n  n_shot: [1]\n")
    (b / 'default_state').write_text('TIMEOUT')
    rc = main(['sweep', str(grid), '--time', '5', '--partition', 'cpu'])
    out = capsys.readouterr().out
    assert rc == 1 and 'failed: n_shot=1: slurm job 4242 ended without a result' in out and 'TIMEOUT' in out, out
    assert '#SBATCH --time=5' in (b / 'sbatch_4242.sh').read_text() and '#SBATCH --partition=cpu' in (b / 'sbatch_4242.sh').read_text()
    failed = json.loads((root / 'n_shot=1' / 'failed.json').read_text())
    assert failed['job_id'] == '4242' and failed['params']['n_shot'] == 1 and str(root / 'submitit' / '4242') in failed['error']
    table = list(csv.DictReader(open(root / 'table.csv')))
    assert [(t['run'], t['status'], t['n_shot']) for t in table] == [('n_shot=1', 'failed', '1')] and 'TIMEOUT' in table[0]['error']
