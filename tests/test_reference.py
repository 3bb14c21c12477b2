"tamt computes what the released TAMT code computes: the released-format fixture, and the GTMT head beyond it."
import pytest, torch
import tamt
from tamt.core import TamtError
import released_reference as R

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 1, 3, 1, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 1, 3, 1, 1, 1)


@pytest.fixture(scope='module')
def ref(reference): return torch.load(reference / 'official_episode_ref.pt', weights_only=True)


@pytest.fixture(scope='module')
def model(reference): return tamt.load_model(reference / 'official_state_fp16.tar', verbose=False)


def episode(ref, K): return (ref[f'video_{K}shot'].float() / 255 - MEAN) / STD


@pytest.mark.parametrize('K', [1, 3])
def test_fixture_scores_and_pooled(model, ref, K):
    ep = episode(ref, K)
    with torch.no_grad():
        torch.testing.assert_close(model(ep, n_shot=K), ref[f'scores_{K}shot'], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(model.embed_parts(ep.flatten(0, 1)).m1, ref[f'pooled_{K}shot'], rtol=1e-4, atol=1e-3)


def test_gtmt_head_matches_released_with_live_weights(ref, reference):
    """The fixture's random weights leave the head's last ReLU at zero (H(M2) = head2.bias), so scale the
    aggregation convs up and zero bn4's bias: then the covariance, grouping, iSQRT and the released U(X) layout
    all reach Z, and tamt must still match the released transcription."""
    S = {k: v.float() for k, v in torch.load(reference / 'official_state_fp16.tar', weights_only=True)['state'].items()}
    S['layer_reduce3.weight'] = S['layer_reduce3.weight'] * 100
    S['layer_reduce4.weight'] = S['layer_reduce4.weight'] * 100
    S['layer_reduce_bn4.bias'] = torch.zeros_like(S['layer_reduce_bn4.bias'])
    m = tamt.HTTN().eval()
    tamt.models.checkpoints.load_state(m, S)
    ep = episode(ref, 3)[:, :2]                                   # 5-way 1-shot + 1 query: 10 clips
    clips = ep.flatten(0, 1)
    with torch.no_grad():
        M1, Y = R.backbone(S, clips)
        z_ref = R.head(S, M1, Y)
        parts = m.embed_parts(clips)
    h = z_ref - M1
    assert (h - S['head2.bias']).abs().max() > 0.05                # the head is live now
    torch.testing.assert_close(parts.z, z_ref, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(m(ep, n_shot=1), R.scores(z_ref.view(5, 2, -1), 1), rtol=1e-4, atol=1e-3)
    # and the layout matters: the 'aligned' temporal layout gives another Z
    m.gtmt.cfg = m.cfg.update(temporal_layout='aligned')
    with torch.no_grad(): z_aligned = m.embed(clips)
    assert (z_aligned - z_ref).abs().max() > 1e-2


def test_wrong_inputs_state_the_expected_shape():
    model = tamt.HTTN().eval()
    with pytest.raises(ValueError, match=r'expected clips of shape \(B, 3, 16, 112, 112\).*got \(2, 3, 8, 112, 112\)'):
        model.embed(torch.zeros(2, 3, 8, 112, 112))
    with pytest.raises(ValueError, match=r'got \(1, 3, 16, 224, 224\)'): model.embed(torch.zeros(1, 3, 16, 224, 224))
    with pytest.raises(ValueError, match=r'expected an episode of shape \(way, n_shot \+ n_query, 3, 16, 112, 112\)'):
        model(torch.zeros(5, 2, 3, 16, 112, 112), n_shot=2)


def test_other_architecture_checkpoint_lists_keys(reference):
    small = tamt.HTTN(depth=3, embed_dim=96, num_heads=2, taa_blocks=1)
    with pytest.raises(TamtError, match=r'shape mismatches: backbone.patch_embed.proj.weight: checkpoint \(384, 3, 2, 16, 16\) vs model \(96, 3, 2, 16, 16\)') as e:
        tamt.models.checkpoints.load_state(small, torch.load(reference / 'official_state_fp16.tar', weights_only=True)['state'])
    assert 'unexpected keys: backbone.blocks.3.' in str(e.value)
