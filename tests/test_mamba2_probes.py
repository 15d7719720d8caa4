"""Mamba-2 under the probes: SSDStateProbe's sums and Mamba2Observer's records against brute force (float64)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssmscope.probes import Mamba2Observer, Observer, observer_for
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


BACKEND_CASES = [("torch", 1, 16), ("torch", 2, 1), ("torch", 2, 3), ("compiled", 1, 4), ("compiled", 2, 4)]


@pytest.mark.parametrize("backend,ngroups,chunk", BACKEND_CASES)
def test_state_and_delta_sums_match_brute_force(backend, ngroups, chunk):
    cur, ref, ref2 = (_inputs(s, ngroups=ngroups) for s in (0, 1, 2))
    probe = SSDStateProbe(references={"init": ref, "prev": ref2}, chunk=chunk, backend=backend)
    probe.observe(*cur, y=ssd_reference(*cur))
    hs = _states(cur)
    torch.testing.assert_close(probe.state_sumsq, _chan(hs), rtol=1e-12, atol=0)
    assert probe.state_maxabs.item() == pytest.approx(max(h.abs().max().item() for h in hs), rel=1e-14)
    for name, r in (("init", ref), ("prev", ref2)):
        diffs = [a - b for a, b in zip(hs, _states(r), strict=True)]
        torch.testing.assert_close(probe.delta_sumsq[name], _chan(diffs), rtol=1e-12, atol=1e-300)
        assert probe.delta_maxabs[name].item() == pytest.approx(max(d.abs().max().item() for d in diffs), rel=1e-14)


@pytest.mark.parametrize("backend,ngroups,chunk", BACKEND_CASES)
def test_adjoint_matches_autograd(backend, ngroups, chunk):
    cur = _inputs(3, ngroups=ngroups)
    w = torch.randn(cur.x.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    x = cur.x.clone().requires_grad_()
    probe = SSDStateProbe(want_grad=True, chunk=chunk, backend=backend)
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


# ---------------------------------------------------------------------------------------------- Mamba2Observer
def _scan_inputs(mixer, hidden: torch.Tensor) -> SSDInputs:
    """The mixer's scan inputs recomputed from its input, op by op (the brute-force side)."""
    cfg = mixer.cfg
    bt, length, _ = hidden.shape
    w = {n: getattr(mixer.in_proj, n) for n in ("x", "B", "C", "dt")}
    proj = {n: hidden @ m.weight.T * m.multiplier for n, m in w.items()}
    xbc = torch.cat([proj["x"], proj["B"], proj["C"]], -1).transpose(1, 2)
    xbc = F.silu(F.conv1d(xbc, mixer.conv1d.weight, mixer.conv1d.bias, padding=cfg.d_conv - 1,
                          groups=xbc.shape[1])[..., :length]).transpose(1, 2)
    gn = cfg.ngroups * cfg.d_state
    x, B, C = xbc.split([cfg.d_inner, gn, gn], -1)
    delta = F.softplus(proj["dt"] + mixer.dt_bias)
    return SSDInputs(x.reshape(bt, length, cfg.nheads, cfg.headdim), delta, -torch.exp(mixer.A_log),
                     B.reshape(bt, length, cfg.ngroups, cfg.d_state), C.reshape(bt, length, cfg.ngroups, cfg.d_state),
                     mixer.D)


def _sums(v: torch.Tensor, state: bool = False) -> dict[str, float]:
    """The schema's raw sums of a (Bt, L, C) activation or a (Bt, L, C, N) state, in float64."""
    v = v.detach().double()
    token = v.flatten(2).norm(dim=-1).sum() if state else v.norm(dim=-1).sum()
    channel = v.norm(dim=-1).sum() if state else v.abs().sum()
    return {"sumsq": v.square().sum().item(), "maxabs": v.abs().max().item(), "token_norm_sum": token.item(),
            "channel_norm_sum": channel.item()}


def _check(rec: dict, expected: dict[str, float]) -> None:
    for k, want in expected.items():
        assert rec[k] == pytest.approx(want, rel=1e-9, abs=1e-12), (rec["site"], rec["quantity"], rec["group"], k)


def _by_key(records: list[dict]) -> dict[tuple, dict]:
    return {(r["layer"], r["site"], r["quantity"], r["group"]): r for r in records}


class _Truth:
    """Brute force for one armed forward/backward: per layer the mixer's input, ∂L/∂y and block output."""

    def __init__(self, model: Mamba2LM):
        self.hidden, self.grad_y, self.out = {}, {}, {}
        self.handles = []
        for i, m in enumerate(model.mixers):
            self.handles.append(m.register_forward_hook(self._on_mixer(i)))
            self.handles.append(m.ssm_output.register_forward_hook(self._on_y(i)))

    def _on_mixer(self, i):
        def hook(mod, args, out):
            self.hidden[i], self.out[i] = args[0].detach(), out.detach()
        return hook

    def _on_y(self, i):
        def hook(mod, args, out):
            out.register_hook(lambda g: self.grad_y.__setitem__(i, g.detach()))
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()

    def layer(self, model: Mamba2LM, i: int) -> dict[str, torch.Tensor]:
        """x states (Bt, L, H·P, N), y, cx, block_out, in_proj outputs, grad_y, λ (Bt, L, H·P, N)."""
        mixer = model.mixers[i]
        with torch.no_grad():
            inp = _scan_inputs(mixer, self.hidden[i])
        states = _states(inp)
        rep = inp.x.shape[2] // inp.C.shape[2]
        c = inp.C.repeat_interleave(rep, 2)
        cx = torch.stack([torch.einsum("bhpn,bhn->bhp", h, c[:, t]) for t, h in enumerate(states)], 1)
        y = cx + inp.x * inp.D[:, None]
        out = {"x": torch.stack(states, 1).flatten(2, 3), "cx": cx.flatten(2), "y": y.flatten(2),
               "block_out": self.out[i], "inputs": inp}
        with torch.no_grad():
            for n in ("z", "x", "B", "C", "dt"):
                lin = getattr(mixer.in_proj, n)
                out[f"in_proj:{n}"] = self.hidden[i] @ lin.weight.T * lin.multiplier
        if i in self.grad_y:
            g = self.grad_y[i].unflatten(-1, inp.x.shape[2:])
            hs = _states(inp._replace(x=inp.x.detach().clone().requires_grad_(), delta=inp.delta.detach(),
                                      A=inp.A.detach(), B=inp.B.detach(), C=inp.C.detach()), leaf=True)
            loss = sum((torch.einsum("bhpn,bhn->bhp", h, c[:, t].detach()) * g[:, t]).sum() for t, h in enumerate(hs))
            loss.backward()
            out["grad_y"], out["grad_x"] = self.grad_y[i], torch.stack([h.grad for h in hs], 1).flatten(2, 3)
        return out


def _train_step(model, opt, ids) -> None:
    logits = model(ids[:, :-1])
    F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).backward()


@pytest.mark.parametrize("ngroups,scan", [(1, "chunked"), (2, "chunked"), (2, "reference")])
def test_observer_records_match_brute_force(ngroups, scan):
    model, ids = _model(ngroups=ngroups, scan=scan), _ids(length=21)  # 21 > the probe's chunk of 16
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    truths = []
    with Mamba2Observer(model, state_prev=True) as obs:
        for step in range(3):
            truth = _Truth(model)
            obs.arm(step)
            opt.zero_grad()
            _train_step(model, opt, ids)
            records = _by_key(obs.collect())
            truth.remove()
            truths.append([truth.layer(model, i) for i in range(2)])
            for i, now in enumerate(truths[-1]):
                sites = ("x", "y", "cx", "block_out", *(f"in_proj:{n}" for n in ("z", "x", "B", "C", "dt")))
                for site in (*sites, "grad_y", "grad_x"):
                    s, _, group = site.partition(":")
                    _check(records[(i, s, "value", group)], _sums(now[site], state=s in ("x", "grad_x")))
                for quantity, ref in (("delta_init", 0), ("delta_prev", step - 1)):
                    for site in sites:
                        s, _, group = site.partition(":")
                        rec = records[(i, s, quantity, group)]
                        if step == 0:
                            assert rec["sumsq"] == rec["maxabs"] == rec["channel_norm_sum"] == 0.0
                            continue
                        _check(rec, _sums(now[site] - truths[ref][i][site], state=s == "x"))
            opt.step()
        assert step == 2 and records[(0, "x", "delta_init", "")]["sumsq"] > 0


def test_in_proj_slice_records_move_with_their_block_only():
    model, ids = _model(ngroups=2), _ids()
    with Mamba2Observer(model, grads=False) as obs:
        obs.arm(0)
        model(ids)
        obs.collect()
        with torch.no_grad():
            model.mixers[1].in_proj.B.weight.add_(0.1)
        obs.arm(1)
        model(ids)
        recs = [r for r in obs.collect() if r["site"] == "in_proj" and r["quantity"] != "value"]
    assert len(recs) == 2 * 5 * 2
    for r in recs:
        moved = r["layer"] == 1 and r["group"] == "B"
        assert (r["sumsq"] > 0) == moved, r
        if not moved:
            assert r["sumsq"] == r["maxabs"] == r["token_norm_sum"] == r["channel_norm_sum"] == 0.0


def test_observer_leaves_outputs_and_gradients_unchanged():
    model, ids = _model(ngroups=2), _ids()
    model.float()
    out = model(ids)
    out.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    with Mamba2Observer(model, state_prev=True, readout=True) as obs:
        for step in range(2):
            model.zero_grad()
            obs.arm(step)
            probed = model(ids)
            probed.square().sum().backward()
            records = obs.collect()
            assert torch.equal(out, probed)
            for n, p in model.named_parameters():
                assert torch.equal(p.grad, grads[n]), n
    sites = {r["site"] for r in records}
    assert sites == {"x", "y", "cx", "block_out", "grad_y", "grad_x", "in_proj", "param", "logits", "readout_grad"}
    params = {r["group"] for r in records if r["site"] == "param"}
    assert all(g.split(":", 1)[1] in dict(model.named_parameters()) for g in params)
    assert all(m.probe is None for m in model.mixers)


def test_collect_without_arm_raises_and_observer_for_picks():
    model = _model()
    with Mamba2Observer(model) as obs, pytest.raises(RuntimeError, match="without arm") as err:
        obs.collect()
    assert "\n" not in str(err.value)
    assert isinstance(observer_for(model), Mamba2Observer)
    from ssmscope.ssm import MambaConfig, MambaLM

    s6 = MambaLM(MambaConfig(d_model=8, n_layers=1, vocab_size=11, d_state=4))
    assert type(observer_for(s6, grads=False)) is Observer
    with pytest.raises(TypeError):
        observer_for(torch.nn.Linear(2, 2))
