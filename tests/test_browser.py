"""The inspection notebook in a real browser: JupyterLab started headless on loopback, `nbs/45_viz.inspect.ipynb`
opened in Debian's Chromium (driven by playwright), all cells run from the Run menu, the widgets rendered and
live (a control changed in the page redraws its figure through the kernel), screenshots kept.

Screenshots go to pytest's temporary folder; TAMT_SCREENSHOTS=<folder> writes them there instead
(`TAMT_SCREENSHOTS=docs/screenshots pytest tests/test_browser.py` refreshes the README's).
Needs /usr/bin/chromium (TAMT_CHROMIUM overrides) and the playwright package, which `.ci/setup` installs;
without them the test is skipped, except under CI (CI=true), where it fails."""
import io, json, os, secrets, shutil, signal, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest
from conftest import need, free_port

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / 'nbs' / '45_viz.inspect.ipynb'
CHROMIUM = os.environ.get('TAMT_CHROMIUM', '/usr/bin/chromium')
INSPECTORS = {'tamt-episodes': ('episodes', 3), 'tamt-adapters': ('adapters', 3), 'tamt-covariance': ('covariance', 3), 'tamt-runs': ('runs', 1)}


def _wait_http(url: str, proc, log: Path, timeout: float = 90):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None: pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200: return
        except OSError: pass
        time.sleep(0.5)
    pytest.fail(f"jupyter lab did not answer on {url} in {timeout} s:\n{log.read_text()[-3000:]}")


def _settings(folder: Path):
    "User settings for a quiet, fully rendered notebook: no news or update checks, no windowing of cells."
    for ext, name, value in [('@jupyterlab/notebook-extension', 'tracker', {'windowingMode': 'none'}),
                             ('@jupyterlab/apputils-extension', 'notification', {'fetchNews': 'false', 'checkForUpdates': False})]:
        f = folder / ext / f'{name}.jupyterlab-settings'; f.parent.mkdir(parents=True, exist_ok=True); f.write_text(json.dumps(value))


def _save_png(png: bytes, path: Path, max_bytes: int = 200_000):
    "Write a screenshot, reduced to a palette PNG (and narrower if need be) to stay commit-sized."
    from PIL import Image
    img = Image.open(io.BytesIO(png)).convert('RGB')
    while True:
        buf = io.BytesIO(); img.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(buf, format='PNG', optimize=True)
        if buf.tell() <= max_bytes or img.width < 500: break
        img = img.resize((int(img.width * 0.85), int(img.height * 0.85)), Image.LANCZOS)
    path.write_bytes(buf.getvalue())


KERNEL = '''() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
  return k ? k.connectionStatus + '/' + k.status : 'none'; }'''
ALL_QUEUED = '''() => { const p = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
  return p.length > 0 && p.every(e => /\\[(\\*|\\d+)\\]/.test(e.textContent)); }'''


def _run_all(page, tries: int = 3):
    "Run > Run All Cells once the kernel is connected and idle; again if the cells were not all queued (a kernel still settling can drop them)."
    for i in range(tries):
        page.wait_for_function(f'() => ({KERNEL})() === "connected/idle"', timeout=120_000)
        page.wait_for_timeout(2000)                                   # let the session settle
        if page.evaluate(KERNEL) != 'connected/idle': continue
        page.locator('.lm-MenuBar-itemLabel', has_text='Run').first.click()
        page.locator('.lm-Menu-itemLabel', has_text='Run All Cells').first.click()
        try: page.wait_for_function(ALL_QUEUED, timeout=20_000); return
        except Exception: print(f'run all, try {i + 1}: cells not queued (kernel {page.evaluate(KERNEL)}); again')
    pytest.fail(f'could not run all cells: kernel {page.evaluate(KERNEL)}')


@pytest.fixture
def lab(tmp_path):
    "JupyterLab on a free loopback port, serving a copy of the inspection notebook; always stopped afterwards."
    need(Path(CHROMIUM).exists(), f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try: import playwright.sync_api  # noqa: F401
    except ImportError: need(False, 'the playwright package is not installed')
    work = tmp_path / 'work'; work.mkdir()
    shutil.copy(NOTEBOOK, work / 'inspect.ipynb')               # run a copy: autosave must not write outputs into nbs/
    _settings(tmp_path / 'settings')
    port, token, log = free_port(), secrets.token_hex(16), tmp_path / 'lab.log'
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / 'config'), JUPYTER_RUNTIME_DIR=str(tmp_path / 'runtime'),
               IPYTHONDIR=str(tmp_path / 'ipython'), PYTHONUNBUFFERED='1')
    cmd = [sys.executable, '-m', 'jupyter', 'lab', '--no-browser', '--ip=127.0.0.1', f'--port={port}', '--ServerApp.port_retries=0',
           f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={work}', f'--LabApp.user_settings_dir={tmp_path / "settings"}',
           f'--LabApp.workspaces_dir={tmp_path / "workspaces"}', '--LabApp.expose_app_in_browser=True']
    if os.geteuid() == 0: cmd.append('--allow-root')              # CI runs as root
    with open(log, 'w') as out:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_http(f'http://127.0.0.1:{port}/api/status?token={token}', proc, log)
        yield dict(url=f'http://127.0.0.1:{port}/lab/tree/inspect.ipynb?token={token}', log=log)
    finally:                                                       # the server and its kernels: the process group we started
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try: proc.wait(20)
            except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL); proc.wait(10)


def test_inspection_notebook_in_chromium(lab, tmp_path):
    from playwright.sync_api import sync_playwright, expect
    shots = Path(os.environ.get('TAMT_SCREENSHOTS') or tmp_path / 'screenshots')
    shots = shots if shots.is_absolute() else REPO / shots; shots.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'])
        try:
            page = browser.new_page(viewport={'width': 1400, 'height': 1000})
            page.goto(lab['url'])
            page.wait_for_selector('.jp-Notebook .jp-Cell', timeout=60_000)
            _run_all(page)
            try: page.wait_for_selector('.tamt-runs .js-plotly-plot', timeout=240_000)                     # the last cell's widget
            except Exception:
                page.screenshot(path=str(tmp_path / 'failed.png'))
                prompts = page.locator('.jp-CodeCell .jp-InputPrompt').all_inner_texts()
                outs = page.locator('.jp-OutputArea-output').all_inner_texts()
                pytest.fail(f"the inspection notebook did not finish (kernel {page.evaluate(KERNEL)}): prompts {prompts}; outputs {[o[:300] for o in outs]}; "
                            f"see {tmp_path / 'failed.png'}; server log:\n{lab['log'].read_text()[-2000:]}")
            page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=120_000)
            run_s = time.time() - t0

            # every cell ran, without an error output
            errors = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]')
            assert errors.count() == 0, errors.first.inner_text()[:2000]
            prompts = page.locator('.jp-CodeCell .jp-InputPrompt').all_inner_texts()
            assert prompts and all(t.strip() not in ('[ ]:', '[*]:') for t in prompts), prompts
            assert 'Error displaying widget' not in page.locator('.jp-Notebook').inner_text()

            # each inspector rendered: its title, its controls and its plotly figures, drawn with data
            for css, (name, n_figs) in INSPECTORS.items():
                box = page.locator(f'.{css}')
                assert box.count() == 1, f'{name}: {box.count()} widgets'
                assert box.locator('.js-plotly-plot').count() == n_figs, f'{name}: plotly figures'
                assert box.locator('.widget-dropdown, .widget-select-multiple, .widget-toggle-buttons').count() >= 1
                assert 'tamt-error' not in box.inner_html(), box.locator('.tamt-message').inner_text()
            ep = page.locator('.tamt-episodes')
            ep.locator('.gtitle', has_text='target_b / novel: episode 0 of seed 0').wait_for()
            ep.locator('.gtitle', has_text='confusion over 30 episodes').wait_for()
            assert ep.locator('.ytick text', has_text='✓').count() + ep.locator('.ytick text', has_text='✗').count() >= 6
            page.locator('.tamt-adapters .gtitle', has_text='TAA block 1').wait_for()
            page.locator('.tamt-adapters .gtitle', has_text='through fine-tuned').first.wait_for()
            page.locator('.tamt-covariance .gtitle', has_text='group 0 (frames 0, 2)').wait_for()
            assert page.locator('.tamt-covariance .heatmaplayer, .tamt-covariance image').count() >= 2
            page.locator('.tamt-runs .legendtext', has_text='target_b_httn_1shot · loss').wait_for()

            for css, (name, _) in INSPECTORS.items():              # a viewport tall enough for the whole widget, then its picture
                loc = page.locator(f'.{css}')
                page.set_viewport_size({'width': 1400, 'height': int(loc.bounding_box()['height']) + 320})
                page.wait_for_timeout(700); loc.scroll_into_view_if_needed(); page.wait_for_timeout(300)
                _save_png(loc.screenshot(), shots / f'{name}.png')
            page.set_viewport_size({'width': 1400, 'height': 1000})

            # live: controls changed in the page go through the kernel and redraw the figures
            seed = ep.locator('.widget-text:has(label:text-is("seed")) input')
            seed.fill('3'); seed.press('Enter')
            ep.locator('.gtitle', has_text='target_b / novel: episode 0 of seed 3').wait_for(timeout=60_000)
            cov = page.locator('.tamt-covariance')
            cov.locator('.widget-dropdown:has(label:text-is("group")) select').select_option(index=1)
            cov.locator('.gtitle', has_text='group 1 (frames 1, 3)').wait_for(timeout=60_000)
            page.locator('.tamt-adapters .widget-toggle-button', has_text='B: clip or class').click()
            expect(page.locator('.tamt-adapters .gtitle', has_text='through fine-tuned')).to_have_count(0, timeout=60_000)
            expect(page.locator('.tamt-adapters .annotation-text', has_text='γ · B')).to_have_count(1)      # B is now a clip
        finally:
            browser.close()
    for name, _ in INSPECTORS.values():
        f = shots / f'{name}.png'
        assert f.exists() and 10_000 < f.stat().st_size <= 200_000, (f, f.stat().st_size if f.exists() else None)
    print(f"all cells ran in {run_s:.0f} s; screenshots in {shots}")
