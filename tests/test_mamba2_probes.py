"""Mamba-2 under the probes: SSDStateProbe's sums and Mamba2Observer's records against brute force (float64)."""

from __future__ import annotations

import math

import pytest
import torch

from ssmscope.ssm.mamba2 import Mamba2Config, Mamba2LM, init_mamba2
from ssmscope.ssm.scan.ssd import ssd_reference
from ssmscope.ssm.scan.ssd_probe import SSDInputs, SSDStateProbe


def _inputs(seed: int, bt=2, length=7, nheads=4, p=3, ngroups=2, n=5) -> SSDInputs:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    delta = torch.nn.functional.softplus(r(bt, length, nheads))
    A = -torch.rand(nheads, generator=g, dtype=torch.float64) * 2 - 0.1
    return SSDInputs(r(bt, length, nheads, p), delta, A, r(bt, length, ngroups, n), r(bt, length, ngroups, n),
                     r(nheads))


def _states(inp: SSDInputs, leaf: bool = False) -> list[torch.Tensor]:
    """h_1..h_L (Bt, H, P, N) by a plain loop; with `leaf`, each h_t retains its gradient."""
    x, delta, A, B, _, _ = inp
    rep = x.shape[2] // B.shape[2]
    h = torch.zeros(x.shape[0], x.shape[2], x.shape[3], B.shape[-1], dtype=x.dtype)
    out = []
    for t in range(x.shape[1]):
        h = (torch.exp(delta[:, t] * A)[..., None, None] * h
             + (delta[:, t, :, None] * x[:, t])[..., None] * B[:, t].repeat_interleave(rep, 1)[:, :, None, :])
        if leaf:
            h.retain_grad()
        out.append(h)
    return out


def _chan(states: list[torch.Tensor]) -> torch.Tensor:
    """(Bt, L, H·P) Σ_n h²."""
    return torch.stack([s.square().sum(-1).flatten(-2) for s in states], dim=1)


@pytest.mark.parametrize("ngroups", [1, 2])
def test_state_and_delta_sums_match_brute_force(ngroups):
    cur, ref, ref2 = (_inputs(s, ngroups=ngroups) for s in (0, 1, 2))
    probe = SSDStateProbe(references={"init": ref, "prev": ref2})
    probe.observe(*cur, y=ssd_reference(*cur))
    hs = _states(cur)
    torch.testing.assert_close(probe.state_sumsq, _chan(hs), rtol=1e-12, atol=0)
    assert probe.state_maxabs.item() == pytest.approx(max(h.abs().max().item() for h in hs), rel=1e-14)
    for name, r in (("init", ref), ("prev", ref2)):
        diffs = [a - b for a, b in zip(hs, _states(r), strict=True)]
        torch.testing.assert_close(probe.delta_sumsq[name], _chan(diffs), rtol=1e-12, atol=1e-300)
        assert probe.delta_maxabs[name].item() == pytest.approx(max(d.abs().max().item() for d in diffs), rel=1e-14)


@pytest.mark.parametrize("ngroups", [1, 2])
def test_adjoint_matches_autograd(ngroups):
    cur = _inputs(3, ngroups=ngroups)
    w = torch.randn(cur.x.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    x = cur.x.clone().requires_grad_()
    probe = SSDStateProbe(want_grad=True)
    args = (x, *cur[1:])
    y = ssd_reference(*args)
    probe.observe(*args, y=y)
    (y * w).sum().backward()
    # brute force: L = Σ w·(h_t C_t + D x), each h_t's .grad the total derivative
    hs = _states(cur._replace(x=cur.x.clone().requires_grad_()), leaf=True)
    rep = cur.x.shape[2] // ngroups
    c = cur.C.repeat_interleave(rep, 2)
    loss = sum((torch.einsum("bhpn,bhn->bhp", h, c[:, t]) * w[:, t]).sum() for t, h in enumerate(hs))
    loss.backward()
    lam = [h.grad for h in hs]
    torch.testing.assert_close(probe.grad_sumsq, _chan(lam), rtol=1e-12, atol=0)
    assert probe.grad_maxabs.item() == pytest.approx(max(g.abs().max().item() for g in lam), rel=1e-14)


def _model(ngroups=1, scan="chunked", d_model=8, seed=0, tie=True) -> Mamba2LM:
    cfg = Mamba2Config(d_model=d_model, n_layers=2, vocab_size=11, d_state=4, headdim=4, ngroups=ngroups,
                       chunk_size=3, scan=scan, tie_readout=tie)
    return init_mamba2(Mamba2LM(cfg), seed).double()


def _ids(seed=0, bt=2, length=7) -> torch.Tensor:
    return torch.randint(0, 11, (bt, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("scan", ["chunked", "reference"])
def test_mixer_probe_leaves_output_and_gradients_bit_identical(scan):
    model, ids = _model(ngroups=2, scan=scan), _ids()
    model.float()
    plain = model(ids)
    plain.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    for m in model.mixers:
        m.probe = SSDStateProbe(want_grad=True)
    probed = model(ids)
    probed.square().sum().backward()
    assert torch.equal(plain, probed)
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, grads[n]), n
    assert all(m.probe.grad_sumsq is not None for m in model.mixers)
    assert math.isfinite(model.mixers[0].probe.state_sumsq.sum().item())
