"""An independent, literal transcription of the released TAMT eval forward pass (spec §2-5), written in plain
torch on the released state dict's own key names, with the released code's fixed sizes (ViT-S, 16 frames,
T=8, G=4) and its reshapes as they are, including the un-permuted temporal conv output. Tests compare
`tamt.HTTN` against it where the fixture alone cannot reach (the GTMT head)."""
import numpy as np
import torch
import torch.nn.functional as F

C, DEPTH, HEADS, T, G = 384, 12, 6, 8, 4


def sincos(n, d):
    ang = np.array([[p / np.power(10000, 2 * (j // 2) / d) for j in range(d)] for p in range(n)])
    ang[:, 0::2] = np.sin(ang[:, 0::2]); ang[:, 1::2] = np.cos(ang[:, 1::2])
    return torch.tensor(ang, dtype=torch.float).unsqueeze(0)


def _ln(S, x, p): return F.layer_norm(x, (C,), S[p + '.weight'], S[p + '.bias'], 1e-6)
def _bn(S, x, p): return F.batch_norm(x, S[p + '.running_mean'], S[p + '.running_var'], S[p + '.weight'], S[p + '.bias'], False, 0.1, 1e-5)


def _block(S, x, i, hw):
    P = f'feature.blocks.{i}.'
    B, N, _ = x.shape
    h = _ln(S, x, P + 'norm1')
    bias = torch.cat([S[P + 'attn.q_bias'], torch.zeros_like(S[P + 'attn.v_bias']), S[P + 'attn.v_bias']])
    qkv = F.linear(h, S[P + 'attn.qkv.weight'], bias).reshape(B, N, 3, HEADS, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * (C // HEADS) ** -0.5, qkv[1], qkv[2]
    a = (q @ k.transpose(-2, -1)).softmax(-1)
    x = x + F.linear((a @ v).transpose(1, 2).reshape(B, N, -1), S[P + 'attn.proj.weight'], S[P + 'attn.proj.bias'])
    u = _ln(S, x, P + 'norm2')
    m = F.linear(F.gelu(F.linear(u, S[P + 'mlp.fc1.weight'], S[P + 'mlp.fc1.bias'])), S[P + 'mlp.fc2.weight'], S[P + 'mlp.fc2.bias'])
    if P + 'tam.L.0.weight' not in S: return x + m
    y = u.view(B, T, hw, hw, C).permute(0, 4, 1, 2, 3).contiguous()                     # (B, C, T, h, w)
    s = F.adaptive_avg_pool2d(y.view(B * C, T, hw, hw), 1).view(B, C, T)
    a = F.relu(_bn(S, F.conv1d(s, S[P + 'tam.L.0.weight'], padding=1), P + 'tam.L.1'))
    g = torch.sigmoid(F.conv1d(a, S[P + 'tam.L2.0.weight']))[..., None, None]
    b = F.conv1d(a, S[P + 'tam.L3.0.weight'])[..., None, None]
    return x + m + (y * g + b * 0.1).permute(0, 2, 3, 4, 1).reshape(B, N, C)


def backbone(S, v):
    "Normalised clips (B, 3, 16, H, W) → (M1, Y) as the released VisionTransformer returns them."
    hw = v.shape[-1] // 16
    x = F.conv3d(v, S['feature.patch_embed.proj.weight'], S['feature.patch_embed.proj.bias'], stride=(2, 16, 16)).flatten(2).transpose(1, 2)
    x = x + sincos(T * hw * hw, C)
    for i in range(DEPTH): x = _block(S, x, i, hw)
    B, N, _ = x.shape
    y = x.view(B, T, N // T, C).permute(0, 2, 3, 1).reshape(B * (N // T), C, T)
    y = F.conv1d(y, S['feature.temporal_conv.weight'], S['feature.temporal_conv.bias'], padding=1, groups=C).reshape(B, N, C)
    return _ln(S, x.mean(1), 'feature.fc_norm'), _ln(S, x + y, 'feature.fc_norm2')


def sqrtm(x, n=3):
    B, d, _ = x.shape
    I3 = 3 * torch.eye(d).expand(B, d, d)
    tr = (x * torch.eye(d)).sum((1, 2))
    A = x / (tr.view(B, 1, 1) + 1e-5)
    ZY = 0.5 * (I3 - A); Y = A @ ZY; Z = ZY
    for _ in range(1, n - 1):
        ZY = 0.5 * (I3 - Z @ Y); Y, Z = Y @ ZY, ZY @ Z
    return 0.5 * Y @ (I3 - Z @ Y) * tr.sqrt().view(B, 1, 1)


def head(S, M1, Yt):
    "Z = M1 + head2(ELSTC(Y)), the released parse_feature with class_way 'add'."
    B, N, _ = Yt.shape
    w = int(round((N // T) ** 0.5))
    y = Yt.permute(0, 2, 1).reshape(B, C, N // w, w)
    y = F.relu(_bn(S, F.conv2d(y, S['layer_reduce1.weight']), 'layer_reduce_bn1'))
    y = F.relu(_bn(S, F.conv2d(y, S['layer_reduce2.weight']), 'layer_reduce_bn2'))
    b, c, n, w = y.shape
    y = y.reshape(b, c * T, n // T, w).view(b, c, T // G, G, n // T, w)
    y = y.permute(0, 3, 1, 2, 4, 5).reshape(b * G, c * (T // G), (n // T) * w)      # (b n) (c t) (h w)
    M = y.shape[-1]
    Ih = (-1. / M / M) * torch.ones(M, M) + (1. / M) * torch.eye(M)
    z = sqrtm(y @ Ih @ y.transpose(1, 2)).reshape(b, G, c * (T // G), c * (T // G))
    z = F.relu(_bn(S, F.conv2d(z, S['layer_reduce3.weight'], padding=1), 'layer_reduce_bn3'))
    z = F.relu(_bn(S, F.conv2d(z, S['layer_reduce4.weight'], stride=2, padding=1), 'layer_reduce_bn4'))
    return M1 + F.linear(z.flatten(1), S['head2.weight'], S['head2.bias'])


def scores(z, n_shot):
    "(way, K+Q, C) representations → (way*Q, way) released scores."
    proto = z[:, :n_shot].mean(1); q = z[:, n_shot:].reshape(-1, z.shape[-1])
    return (q[:, None] * proto[None]).sum(2) if n_shot == 1 else -((q[:, None] - proto[None]) ** 2).sum(2)
