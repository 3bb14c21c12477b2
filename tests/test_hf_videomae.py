"""transformers VideoMAE folders: tamt loads what save_pretrained writes and computes what transformers computes; save_hf
writes what transformers loads; tamt's own .safetensors checkpoints load with no pickle."""
import json, re, shutil, sys, warnings
from pathlib import Path
from unittest import mock
import pytest, torch
import tamt
from tamt.core import TamtError
from tamt.models import hf as H
from tamt.models.checkpoints import read_checkpoint, read_safetensors, save_checkpoint
from tamt.models.httn import HTTN
from tamt.models.httn import HTTNConfig

transformers = pytest.importorskip('transformers')
from transformers import VideoMAEConfig, VideoMAEModel, VideoMAEForVideoClassification, VideoMAEForPreTraining
transformers.logging.set_verbosity_error(); transformers.utils.logging.disable_progress_bar()
torch.set_num_threads(1)

SIZES = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256, image_size=32, num_frames=4,
             tubelet_size=2, patch_size=16)
TINY = dict(groups=1, taa_blocks=0, verbose=False)       # 2 token frames; no adapters (new modules that change the blocks' output)
CASES = {'model': (VideoMAEModel, True), 'classification': (VideoMAEForVideoClassification, True),
         'pretraining': (VideoMAEForPreTraining, False), 'model_nopool': (VideoMAEModel, False)}


def hf_tiny(cls, seed=0, **kw):
    "A small transformers VideoMAE with every parameter random, biases and norms included (so a dropped one shows)."
    torch.manual_seed(seed)
    cfg = VideoMAEConfig(**{**SIZES, **kw}, decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                         decoder_intermediate_size=64, num_labels=5)
    m = cls(cfg).eval()
    with torch.no_grad():
        for p in m.parameters(): p.add_(torch.randn_like(p) * 0.1)
    return m


def hf_features(m, clips):
    "transformers' tokens after the last block, and the classifier's input (None without fc_norm)."
    x, enc = clips.permute(0, 2, 1, 3, 4), getattr(m, 'videomae', m)
    with torch.no_grad():
        tokens = enc(x, output_hidden_states=True).hidden_states[-1]
        if getattr(m, 'fc_norm', None) is None: return tokens, None
        seen = []; h = m.classifier.register_forward_pre_hook(lambda mod, a: seen.append(a[0]))
        m(x); h.remove()
    return tokens, seen[0]


def tamt_features(m, clips):
    with torch.no_grad(): tok = m.backbone.forward_tokens(clips); return tok, m.backbone.pool(tok)


def max_diff(a, b) -> float:
    d = (a - b).abs().max().item()
    assert d <= 1e-5 * max(1., b.abs().max().item()), f"max |diff| {d:.2e} at scale {b.abs().max().item():.2f}"
    return d


def as_bin(folder, dest) -> Path:
    "The folder as older transformers wrote it: pytorch_model.bin instead of model.safetensors."
    dest.mkdir(); shutil.copy(folder/'config.json', dest)
    torch.save(read_safetensors(folder/'model.safetensors')[0], dest/'pytorch_model.bin'); return dest


@pytest.fixture(scope='module')
def clips(): return torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
    "{case: (transformers model, its save_pretrained folder)}."
    root = tmp_path_factory.mktemp('hf')
    out = {}
    for name, (cls, pool) in CASES.items():
        m = hf_tiny(cls, use_mean_pooling=pool); m.save_pretrained(root/name); out[name] = m, root/name
    return out


@pytest.mark.parametrize('weights', ['safetensors', 'bin'])
@pytest.mark.parametrize('case', list(CASES))
def test_tamt_computes_what_transformers_computes(saved, clips, case, weights, tmp_path):
    hf, folder = saved[case]
    if weights == 'bin': folder = as_bin(folder, tmp_path/'bin')
    m = tamt.load_model(folder, **TINY)
    assert m.load_report.format == 'hf_videomae' and m.load_report.loaded == 28 + 2 * (case == 'classification')
    hf_tok, hf_pooled = hf_features(hf, clips)
    tok, pooled = tamt_features(m, clips)
    max_diff(tok, hf_tok)
    enc = getattr(hf, 'videomae', hf)
    u = torch.randn(4, 64) * 1e-3                 # where LayerNorm's eps matters (on these clips it changes the 6th digit only)
    with torch.no_grad(): max_diff(m.backbone.blocks[1].norm2(u), enc.encoder.layer[1].layernorm_after(u))
    if hf_pooled is not None:
        max_diff(pooled, hf_pooled); assert m.cfg.fc_norm_eps == 1e-5
        with torch.no_grad(): max_diff(m.backbone.fc_norm(u), hf.fc_norm(u))
    else: assert 'backbone.fc_norm.weight' in m.load_report.new
    if not CASES[case][1]:            # no mean pooling: the dropped final layernorm turns tamt's tokens into last_hidden_state
        with torch.no_grad(): max_diff(enc.layernorm(tok), enc(clips.permute(0, 2, 1, 3, 4)).last_hidden_state)
    unused = {k.split('.')[0] for k in m.load_report.unused}
    assert unused == {'model': set(), 'classification': {'classifier'}, 'model_nopool': {'layernorm'},
                      'pretraining': {'videomae', 'decoder', 'encoder_to_decoder', 'mask_token'}}[case]


def test_config_json_is_read_not_guessed(saved):
    cfg = tamt.load_model(saved['model'][1], **TINY).cfg
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio, cfg.img_size, cfg.patch_size, cfg.num_frames, cfg.tubelet,
            cfg.norm_eps) == (64, 2, 2, 4.0, 32, 16, 4, 2, 1e-12)


def test_mapping_mistakes_fail_the_comparison(saved, clips):
    hf, folder = saved['model']
    hf_tok, _ = hf_features(hf, clips)
    with mock.patch.object(H, '_QKV', ('query', 'value', 'key')): swapped = tamt.load_model(folder, **TINY)
    with pytest.raises(AssertionError, match='max |diff|'): max_diff(tamt_features(swapped, clips)[0], hf_tok)
    with mock.patch.object(H, '_HF_BLOCK', [b for b in H._HF_BLOCK if b[1] != 'attn.v_bias']):
        with pytest.raises(TamtError, match='missing keys: backbone.blocks.0.attn.v_bias'): tamt.load_model(folder, **TINY)
    no_vbias = tamt.load_model(folder, **TINY)
    for b in no_vbias.backbone.blocks: b.attn.v_bias.data.zero_()
    with pytest.raises(AssertionError, match='max |diff|'): max_diff(tamt_features(no_vbias, clips)[0], hf_tok)
    other_heads = tamt.load_model(folder, **TINY, num_heads=4)
    with pytest.raises(AssertionError, match='max |diff|'): max_diff(tamt_features(other_heads, clips)[0], hf_tok)


def test_vit_s_head_count(tmp_path):
    "A 384-wide config with 16 heads (what transformers' converter writes for ViT-S): followed, with a warning; num_heads=6 overrides."
    torch.manual_seed(0)
    hf = VideoMAEModel(VideoMAEConfig(hidden_size=384, num_hidden_layers=1, num_attention_heads=16, intermediate_size=1536,
                                      image_size=16, patch_size=16, num_frames=2, tubelet_size=2)).eval()
    hf.save_pretrained(tmp_path/'vits')
    with pytest.warns(UserWarning, match='pass num_heads=6'): m16 = tamt.load_model(tmp_path/'vits', **TINY)
    clips = torch.randn(1, 3, 2, 16, 16)
    assert m16.cfg.num_heads == 16
    max_diff(tamt_features(m16, clips)[0], hf_features(hf, clips)[0])
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert tamt.load_model(tmp_path/'vits', **TINY, num_heads=6).cfg.num_heads == 6


def test_bad_folders(saved, tmp_path):
    (tmp_path/'empty').mkdir()
    with pytest.raises(TamtError, match='empty: a folder without config.json'): tamt.load_model(tmp_path/'empty')
    bad = tmp_path/'bad'; shutil.copytree(saved['model'][1], bad)
    cfg = json.loads((bad/'config.json').read_text())
    (bad/'config.json').write_text(json.dumps({**cfg, 'model_type': 'vit'}))
    with pytest.raises(TamtError, match="config.json: model_type is 'vit', not 'videomae'"): tamt.load_model(bad)
    (bad/'config.json').write_text(json.dumps({**cfg, 'num_hidden_layers': 3}))
    with pytest.raises(TamtError, match=r'(?s)does not fit.*missing keys: backbone.blocks.2.*config.json does not describe the weights'):
        tamt.load_model(bad, **TINY)
    (bad/'config.json').write_text(json.dumps({**cfg, 'intermediate_size': 128}))
    with pytest.raises(TamtError, match=r'mlp.fc1.weight: checkpoint \(256, 64\) vs model \(128, 64\)'): tamt.load_model(bad, **TINY)
    (bad/'config.json').write_text('{"model_type": ')
    with pytest.raises(TamtError, match='config.json: not valid JSON'): tamt.load_model(bad)
    (bad/'config.json').write_text(json.dumps(cfg)); (bad/'model.safetensors').unlink()
    with pytest.raises(TamtError, match='has config.json but no weights'): tamt.load_model(bad)
    (bad/'model.safetensors.index.json').write_text(json.dumps({'weight_map': {'a': 'model-00001-of-00002.safetensors'}}))
    with pytest.raises(TamtError, match='lists shards that are not there: model-00001-of-00002.safetensors'): tamt.load_model(bad)


def test_sharded_folder_and_no_qv_bias(saved, clips, tmp_path):
    hf, folder = saved['model']
    st = read_safetensors(folder/'model.safetensors')[0]
    from safetensors.torch import save_file
    sh = tmp_path/'sharded'; sh.mkdir(); shutil.copy(folder/'config.json', sh)
    names = sorted(st); half = len(names) // 2
    wmap = {}
    for i, part in enumerate((names[:half], names[half:])):
        f = f'model-0000{i + 1}-of-00002.safetensors'; save_file({k: st[k] for k in part}, sh/f, metadata={'format': 'pt'})
        wmap.update({k: f for k in part})
    (sh/'model.safetensors.index.json').write_text(json.dumps({'metadata': {}, 'weight_map': wmap}))
    max_diff(tamt_features(tamt.load_model(sh, **TINY), clips)[0], hf_features(hf, clips)[0])
    hf0 = hf_tiny(VideoMAEModel, qv_bias=False); hf0.save_pretrained(tmp_path/'noqv')
    max_diff(tamt_features(tamt.load_model(tmp_path/'noqv', **TINY), clips)[0], hf_features(hf0, clips)[0])


def test_save_hf_loads_in_transformers(clips, tmp_path):
    torch.manual_seed(1)
    src = HTTN(HTTNConfig(embed_dim=64, depth=2, num_heads=2, img_size=32, num_frames=4, groups=1, taa_blocks=0)).eval()
    with torch.no_grad():
        for p in src.parameters(): p.add_(torch.randn_like(p) * 0.1)
    H.save_hf(src, tmp_path/'out', verbose=False)
    assert sorted(p.name for p in (tmp_path/'out').iterdir()) == ['config.json', 'model.safetensors']
    back, info = VideoMAEModel.from_pretrained(tmp_path/'out', output_loading_info=True)
    assert not info['missing_keys'] and not info['unexpected_keys']
    with torch.no_grad(): max_diff(back.eval()(clips.permute(0, 2, 1, 3, 4)).last_hidden_state, src.backbone.forward_tokens(clips))
    with pytest.raises(TamtError, match='already exists; pass overwrite=True'): H.save_hf(src, tmp_path/'out', verbose=False)
    (tmp_path/'mine').mkdir(); (tmp_path/'mine'/'notes.txt').write_text('keep')
    with pytest.raises(TamtError, match='is not a model folder'): H.save_hf(src, tmp_path/'mine', overwrite=True)
    assert (tmp_path/'mine'/'notes.txt').read_text() == 'keep'
    with pytest.warns(UserWarning, match=r'adapters in blocks \[1\]'):
        H.save_hf(HTTN(src.cfg.update(taa_blocks=1)), tmp_path/'out', overwrite=True, verbose=False)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]         # no temporary folder left


def test_save_hf_failure_leaves_old_folder(tmp_path):
    src = HTTN(HTTNConfig(embed_dim=64, depth=1, num_heads=1, img_size=32, num_frames=4, groups=1, taa_blocks=0))
    H.save_hf(src, tmp_path/'out', verbose=False)
    before = (tmp_path/'out'/'model.safetensors').read_bytes()
    with mock.patch.object(H.os, 'fsync', side_effect=OSError(28, 'No space left on device')):
        with pytest.raises(tamt.core.WriteError, match='no space left on device'):
            H.save_hf(HTTN(src.cfg.update(embed_dim=128, num_heads=2)), tmp_path/'out', overwrite=True, verbose=False)
    assert (tmp_path/'out'/'model.safetensors').read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ['out']


# --- tamt's own checkpoints as safetensors + JSON ---------------------------------------------------------------

@pytest.fixture
def small():
    torch.manual_seed(0)
    return HTTN(HTTNConfig(embed_dim=64, depth=2, num_heads=2, img_size=32, num_frames=4, groups=1, taa_blocks=1))


def no_pickle(*a, **k): raise AssertionError('pickle used')


def test_safetensors_checkpoint_round_trip_without_pickle(small, tmp_path):
    save_checkpoint(small, tmp_path/'m.safetensors', step=12, val_acc=0.75)
    save_checkpoint(small, tmp_path/'m.pth', step=12)
    with mock.patch('torch.load', no_pickle), mock.patch('pickle.load', no_pickle), mock.patch('pickle.loads', no_pickle), \
         mock.patch('pickle.Unpickler', no_pickle):
        back = tamt.load_model(tmp_path/'m.safetensors', verbose=False)
        state, cfg, extra = read_checkpoint(tmp_path/'m.safetensors')
        with pytest.raises(TamtError, match='pickle used'): tamt.load_model(tmp_path/'m.pth', verbose=False)   # the trap is live
    assert back.cfg == small.cfg and extra == {'step': 12, 'val_acc': 0.75}
    assert all(torch.equal(back.state_dict()[k], v) for k, v in small.state_dict().items())
    assert read_checkpoint(tmp_path/'m.pth')[2] == {'step': 12}


def test_safetensors_checkpoint_tampered(small, tmp_path):
    from safetensors.torch import save_file
    save_checkpoint(small, tmp_path/'m.safetensors')
    st, meta = read_safetensors(tmp_path/'m.safetensors')
    info = json.loads(meta['tamt']); info['config']['depth'] = 3
    save_file(st, tmp_path/'deeper.safetensors', metadata={**meta, 'tamt': json.dumps(info)})
    with pytest.raises(TamtError, match=r'(?s)missing keys: backbone.blocks.2.*does not describe its tensors'):
        tamt.load_model(tmp_path/'deeper.safetensors', verbose=False)
    st2 = dict(st); st2['backbone.blocks.0.mlp.fc1.weight'] = torch.zeros(128, 64)
    save_file(st2, tmp_path/'swapped.safetensors', metadata=meta)
    with pytest.raises(TamtError, match=r'mlp.fc1.weight: checkpoint \(128, 64\) vs model \(256, 64\)'):
        tamt.load_model(tmp_path/'swapped.safetensors', verbose=False)
    data = (tmp_path/'m.safetensors').read_bytes()
    (tmp_path/'cut.safetensors').write_bytes(data[:len(data) // 2])
    with pytest.raises(TamtError, match='cut.safetensors: cannot be read as a safetensors file'): tamt.load_model(tmp_path/'cut.safetensors')
    info = json.loads(meta['tamt']); info['version'] = 2
    save_file(st, tmp_path/'newer.safetensors', metadata={**meta, 'tamt': json.dumps(info)})
    with pytest.raises(TamtError, match='written by a newer tamt'): tamt.load_model(tmp_path/'newer.safetensors')
    with pytest.raises(TamtError, match='keeps its extras as JSON'): save_checkpoint(small, tmp_path/'x.safetensors', opt=object())
    assert not (tmp_path/'x.safetensors').exists()


def test_tamt_needs_no_transformers(saved, small, tmp_path):
    "No tamt module imports transformers, and with it unimportable tamt loads a transformers folder, a .safetensors and a .pth checkpoint."
    pkg = Path(tamt.__file__).parent
    assert not [f for f in pkg.rglob('*.py') if re.search(r'^\s*(import|from)\s+transformers\b', f.read_text(), re.M)]
    save_checkpoint(small, tmp_path/'m.safetensors'); save_checkpoint(small, tmp_path/'m.pth')
    with mock.patch.dict(sys.modules, {'transformers': None}):
        for p in (saved['classification'][1], tmp_path/'m.safetensors', tmp_path/'m.pth'): tamt.load_model(p, groups=1, verbose=False)
