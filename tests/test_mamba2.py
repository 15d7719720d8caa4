"""Mamba-2 foundations (#28): the layer's shapes, the two SSD scans against each other, the init ranges, the
gated norm's two groupings, config errors, and (when transformers is installed) logits equal to transformers'."""

from __future__ import annotations

import math

import pytest
import torch

from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.mamba2 import (
    GatedRMSNorm,
    Mamba2Config,
    Mamba2LM,
    Mamba2Mixer,
    fused_state_dict,
    init_mamba2,
    split_state_dict,
)
from ssmscope.ssm.scan.ssd import ssd_chunked, ssd_reference

F64 = torch.float64


def tiny(**kw) -> Mamba2Config:
    base = dict(d_model=16, n_layers=2, vocab_size=37, d_state=8, headdim=8, expand=2, ngroups=2, chunk_size=5)
    return Mamba2Config(**{**base, **kw})


def scan_inputs(b=2, L=13, H=4, P=3, G=2, N=5, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    t = [torch.randn(b, L, H, P, generator=g, dtype=F64),
         torch.rand(b, L, H, generator=g, dtype=F64) * 0.5 + 0.01,
         -torch.rand(H, generator=g, dtype=F64) * 3 - 0.1,
         torch.randn(b, L, G, N, generator=g, dtype=F64),
         torch.randn(b, L, G, N, generator=g, dtype=F64),
         torch.randn(H, generator=g, dtype=F64)]
    return [x.requires_grad_(grad) for x in t]


def test_shapes_and_in_proj_rows():
    cfg = tiny()
    assert (cfg.d_inner, cfg.nheads) == (32, 4)
    model = init_mamba2(Mamba2LM(cfg), seed=0)
    mixer = model.mixers[0]
    assert len(model.mixers) == 2 and isinstance(mixer, Mamba2Mixer)
    blocks = {n: tuple(getattr(mixer.in_proj, n).weight.shape) for n in ("z", "x", "B", "C", "dt")}
    assert blocks == {"z": (32, 16), "x": (32, 16), "B": (16, 16), "C": (16, 16), "dt": (4, 16)}
    fused = fused_state_dict(model.state_dict())
    assert fused["layers.0.mixer.in_proj.weight"].shape == (2 * 32 + 2 * 2 * 8 + 4, 16) == (cfg.in_proj_rows, 16)
    assert not any(".in_proj.z." in k for k in fused)
    back = split_state_dict(fused, cfg)
    assert back.keys() == model.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())
    assert mixer.conv1d.weight.shape == (32 + 2 * 2 * 8, 1, 4)
    assert mixer.A_log.shape == mixer.D.shape == mixer.dt_bias.shape == (4,)
    ids = torch.randint(0, 37, (3, 11))
    assert model(ids).shape == (3, 11, 37)
    assert mixer(torch.randn(3, 11, 16)).shape == (3, 11, 16)
    assert model.readout_tied and not Mamba2LM(tiny(tie_readout=False)).readout_tied


@pytest.mark.parametrize("chunk", [1, 4, 5, 13, 64])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_chunked_equals_reference_forward_and_backward(chunk, groups):
    inputs = scan_inputs(G=groups, grad=True)
    y1, s1 = ssd_reference(*inputs, return_final_state=True)
    g1 = torch.autograd.grad((y1 * y1.detach().cos()).sum() + s1.pow(2).sum(), inputs)
    y2, s2 = ssd_chunked(*inputs, return_final_state=True, chunk_size=chunk)
    g2 = torch.autograd.grad((y2 * y1.detach().cos()).sum() + s2.pow(2).sum(), inputs)
    torch.testing.assert_close(y2, y1, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s2, s1, rtol=1e-10, atol=1e-10)
    for a, b in zip(g2, g1, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_chunked_carries_an_initial_state_like_two_halves_of_the_reference():
    x, dt, A, B, C, D = scan_inputs(L=17)
    y, s = ssd_reference(x, dt, A, B, C, D, return_final_state=True)
    ya, sa = ssd_reference(x[:, :6], dt[:, :6], A, B[:, :6], C[:, :6], D, return_final_state=True)
    yb, sb = ssd_chunked(x[:, 6:], dt[:, 6:], A, B[:, 6:], C[:, 6:], D, initial_state=sa, return_final_state=True,
                         chunk_size=4)
    torch.testing.assert_close(torch.cat([ya, yb], 1), y, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(sb, s, rtol=1e-10, atol=1e-10)


def test_gradcheck_of_the_reference_scan():
    inputs = scan_inputs(b=1, L=4, H=2, P=2, G=1, N=3, grad=True)
    assert torch.autograd.gradcheck(lambda *t: ssd_reference(*t, return_final_state=True), inputs)


def test_the_mixer_runs_either_scan_to_the_same_output():
    cfg = tiny()
    torch.manual_seed(1)
    model = init_mamba2(Mamba2LM(cfg).to(F64), seed=3)
    ref = Mamba2LM(cfg, scan="reference").to(F64)
    ref.load_state_dict(model.state_dict())
    ids = torch.randint(0, 37, (2, 12))
    torch.testing.assert_close(model(ids), ref(ids), rtol=1e-10, atol=1e-10)
    with pytest.raises(ConfigError):
        Mamba2Mixer(cfg, scan="triton")


def test_group_and_full_norms_agree_for_one_group_and_differ_for_more():
    g = torch.Generator().manual_seed(0)
    y, z = torch.randn(3, 5, 32, generator=g, dtype=F64), torch.randn(3, 5, 32, generator=g, dtype=F64)
    full = GatedRMSNorm(32, 32, 1e-5).to(F64)
    grouped = Mamba2Mixer(tiny(ngroups=2, norm="group")).norm.to(F64)
    assert Mamba2Mixer(tiny(ngroups=2, norm="full")).norm.group_size == 32 and grouped.group_size == 16
    one = Mamba2Mixer(tiny(ngroups=1, norm="group")).norm.to(F64)
    torch.testing.assert_close(one(y, z), full(y, z), rtol=0, atol=0)
    # per group: each half is normalised on its own, i.e. the full norm rescaled by rms(all)/rms(half)
    g_ = y * torch.nn.functional.silu(z)
    ms_all = g_.pow(2).mean(-1, keepdim=True)
    ms_half = g_.unflatten(-1, (2, 16)).pow(2).mean(-1, keepdim=True)
    expected = (full(y, z).unflatten(-1, (2, 16)) * torch.sqrt((ms_all[..., None, :] + 1e-5) / (ms_half + 1e-5)))
    torch.testing.assert_close(grouped(y, z), expected.flatten(-2), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(grouped(y, z), full(y, z))
    cfg = tiny(ngroups=1)
    a, b = (Mamba2LM(Mamba2Config(**{**cfg.__dict__, "norm": n})).to(F64) for n in ("group", "full"))
    init_mamba2(a, 0)
    b.load_state_dict(a.state_dict())
    ids = torch.randint(0, 37, (2, 7))
    torch.testing.assert_close(a(ids), b(ids), rtol=0, atol=0)


def test_init_ranges():
    cfg = tiny(d_model=64, headdim=4, ngroups=1)  # 32 heads per layer
    model = init_mamba2(Mamba2LM(cfg), seed=0)
    for m in model.mixers:
        assert m.A_log.min() >= math.log(1) and m.A_log.max() <= math.log(16)
        dt = torch.nn.functional.softplus(m.dt_bias)
        assert dt.min() >= cfg.dt_min * (1 - 1e-5) and dt.max() <= cfg.dt_max * (1 + 1e-5)
        assert torch.equal(m.D, torch.ones_like(m.D))
    assert abs(model.embedding.weight.std().item() - 0.02) < 0.004
    again = init_mamba2(Mamba2LM(cfg), seed=0)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters(), strict=True))


@pytest.mark.parametrize("kw", [dict(d_model=0), dict(headdim=5), dict(ngroups=3), dict(dt_min=0.2),
                                dict(dt_limit=(0.1, 0.05)), dict(dt_limit=0.1),
                                dict(a_init_range=(1, "16")), dict(a_init_range=(0, 16)), dict(norm="layer"),
                                dict(scan="fast"), dict(tie_readout="yes"), dict(dt_init_floor=-1.0)])
def test_invalid_configs_are_one_line_config_errors(kw):
    with pytest.raises(ConfigError) as err:
        tiny(**kw)
    assert "\n" not in str(err.value) and str(err.value)


def test_logits_equal_transformers_mamba2():
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    if not hasattr(transformers, "Mamba2ForCausalLM"):
        pytest.skip("this transformers has no Mamba2ForCausalLM")
    hf_cfg = transformers.Mamba2Config(num_heads=4, head_dim=8, hidden_size=16, state_size=8, n_groups=2,
                                       vocab_size=37, num_hidden_layers=2, expand=2, chunk_size=5,
                                       residual_in_fp32=False, tie_word_embeddings=False)
    torch.manual_seed(0)
    hf = transformers.Mamba2ForCausalLM(hf_cfg).to(F64).eval()
    with torch.no_grad():  # move every parameter off its init so that no slot passes by coincidence
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ours = Mamba2LM(tiny(tie_readout=False, norm="group")).to(F64)
    state = {k.removeprefix("backbone.").replace("embeddings.", "embedding."): v for k, v in hf.state_dict().items()}
    state = split_state_dict(state, tiny())
    assert ours.load_state_dict(state, strict=True)
    ids = torch.randint(0, 37, (2, 13))
    with torch.no_grad():
        theirs = hf(ids).logits
        mine = ours(ids)
    assert (mine - theirs).abs().max().item() <= 1e-5
    full = Mamba2LM(tiny(tie_readout=False, norm="full")).to(F64)  # transformers 5.25 normalises per group
    full.load_state_dict(state, strict=True)
    with torch.no_grad():
        assert (full(ids) - theirs).abs().max().item() > 1e-2
