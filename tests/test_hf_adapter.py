"""transformers' Mamba under ssmscope: roles, the user's init as the base, per-row learning rates,
the recomputed scan against the model's own, and the same records as an ssmscope MambaLM."""

from __future__ import annotations

import importlib
import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F

from ssmscope.probes import Observer
from ssmscope.probes.hf import HFObserver, RecomputeMismatch
from ssmscope.ssm import MambaConfig, MambaLM, apply_preset, load_preset
from ssmscope.ssm.adapters.hf import (
    HFMamba,
    HFWidths,
    apply_preset_hf,
    base_scales,
    canonical_params,
    plan_hf,
)
from ssmscope.ssm.adapters.optim import ROW_SCALE, RowScaledAdam, RowScaledSGD
from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.roles import ROLES_OF_FAMILY, Family, Role

# transformers is imported only when a test runs, never at collection: it imports triton, and triton fixes its
# interpreter mode at its first import, before tests/test_scan_triton.py could set TRITON_INTERPRET=1.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                reason="transformers is not installed (pip install -e '.[hf]')")

VOCAB = 64
SMALL = HFMamba({"num_hidden_layers": 2, "vocab_size": VOCAB})


def build(n_u: int, n_x: int, seed: int = 0, factory: HFMamba = SMALL):
    torch.manual_seed(seed)
    return factory(n_u, n_x)


def ids(seed: int = 0, batch: int = 2, length: int = 12) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length + 1), generator=torch.Generator().manual_seed(seed))


def lm_loss(model, batch):
    logits = model(batch[:, :-1]) if isinstance(model, MambaLM) else model(input_ids=batch[:, :-1],
                                                                            use_cache=False).logits
    return F.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))


# ----------------------------------------------------------------------------- names and roles
def test_every_transformers_weight_has_its_ssmscope_name_and_role():
    model = build(64, 16)
    rows = canonical_params(model)
    names = {cp.name: cp for cp in rows}
    assert all(cp.role is not None for cp in rows)
    assert names["embedding.weight"].hf_name == "backbone.embeddings.weight"
    assert names["lm_head.weight"].role == Role.READOUT
    assert names["layers.1.mixer.A_log"].role == Role.A_LOG and names["layers.1.mixer.A_log"].layer == 1
    # x_proj (R + 2N rows) is read as its three row blocks, in state-spaces/mamba's order dt | B | C
    w = HFWidths.of(model)
    assert (w.n_u, w.n_x, w.rank, w.d_model) == (64, 16, 2, 32)
    blocks = {b: names[f"layers.0.mixer.x_proj.{b}.weight"] for b in ("dt", "B", "C")}
    assert [(blocks[b].rows.start, blocks[b].rows.stop) for b in ("dt", "B", "C")] == [(0, 2), (2, 18), (18, 34)]
    assert [blocks[b].role for b in ("dt", "B", "C")] == [Role.X_PROJ_DT, Role.X_PROJ_B, Role.X_PROJ_C]
    assert len(rows) == len(list(model.named_parameters())) + 2 * 2  # x_proj: one parameter → three blocks


def test_what_cannot_be_put_under_a_preset_is_refused_in_one_line():
    tied = build(32, 32, factory=HFMamba({"num_hidden_layers": 1, "vocab_size": VOCAB, "tie_word_embeddings": True}))
    with pytest.raises(ConfigError, match="tie_word_embeddings=False"):
        apply_preset_hf(tied, "sp", "adam", 0.01)
    biased = build(32, 32, factory=HFMamba({"num_hidden_layers": 1, "vocab_size": VOCAB, "use_bias": True}))
    with pytest.raises(ConfigError, match=r"in_proj\.bias.*use_bias=False"):
        apply_preset_hf(biased, "sp", "adam", 0.01)
    with pytest.raises(ConfigError, match="base width"):
        apply_preset_hf(build(64, 64), "sp", "adam", 0.01)  # no base given, and not at the base width
    with pytest.raises(ConfigError, match="build the base at that width"):
        apply_preset_hf(build(64, 64), "sp", "adam", 0.01, base=build(64, 64))
    with pytest.raises(ConfigError, match="widths are set per call"):
        HFMamba({"hidden_size": 32})


def test_a_preset_with_a_forward_multiplier_is_refused(tmp_path):
    plain = "init = {}\nlr = {sgd = {}, adam = {}}\n"
    body = "".join(f"[roles.{r.value}]\n{plain}" for r in ROLES_OF_FAMILY[Family.MAMBA] if r != Role.READOUT)
    path = tmp_path / "mult.toml"
    path.write_text('[preset]\nname = "mult"\nbase_n_u = 32\nbase_n_x = 32\n' + body
                    + '[roles.readout]\ninit = {}\nlr = {sgd = {}, adam = {}}\nmult = {n_u = -1}\n')
    with pytest.raises(ConfigError, match="forward multiplier"):
        apply_preset_hf(build(64, 64), str(path), "adam", 0.01, base=build(32, 32))


# ----------------------------------------------------------------------------- the user's init as the base
def test_at_the_base_width_every_preset_leaves_the_users_init_as_it_is():
    model = build(32, 32)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_preset_hf(model, "mup-ssm", "adam", 0.01)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_each_role_is_rescaled_to_its_base_scale_times_the_presets_width_factor():
    base = build(32, 32, seed=1)
    model = build(128, 64, seed=1)
    structural = {n: p.detach().clone() for n, p in model.named_parameters() if "A_log" in n or "dt_proj.bias" in n}
    sigma0 = base_scales(base)
    apply_preset_hf(model, "mup-ssm", "sgd", 0.1, base=base)
    after = base_scales(model)
    u, x = 128 / 32, 64 / 32
    expected = {  # mup-ssm, euler rules (transformers' scan), exponents of (N_u/N_u0, N_x/N_x0)
        Role.IN_PROJ: u ** -0.5, Role.X_PROJ_DT: u ** -0.5, Role.X_PROJ_B: u ** -0.5,
        Role.X_PROJ_C: u ** -0.5 * x ** -0.5, Role.DT_PROJ_WEIGHT: u ** -0.5, Role.OUT_PROJ: u ** -0.5,
        Role.READOUT: u ** -1, Role.EMBEDDING: 1.0, Role.CONV_WEIGHT: 1.0, Role.NORM: 1.0, Role.D: 1.0,
    }
    for role, factor in expected.items():
        assert after[role] == pytest.approx(sigma0[role] * factor, rel=1e-6), role  # fp32 weights
    assert after[Role.CONV_BIAS] == 0.0  # transformers zeroes the conv bias: zero stays zero
    assert all(torch.equal(structural[n], p) for n, p in model.named_parameters() if n in structural)


def test_x_proj_rows_get_their_roles_learning_rates():
    model = build(128, 64)
    groups = apply_preset_hf(model, "mup-ssm", "adam", 0.01, base=build(32, 32))
    xg = next(g for g in groups if g["name"] == "layers.0.mixer.x_proj.weight")
    u, x = 4.0, 2.0
    lr_dt, lr_b, lr_c = 0.01 / u, 0.01 / u / math.sqrt(x), 0.01 / u / x  # mup-ssm adam, euler
    assert xg["lr"] == pytest.approx(lr_dt)
    r, n = 128 // 2 // 16, 64
    scale = xg[ROW_SCALE]
    assert torch.allclose(scale[:r], torch.ones(r, dtype=torch.float64))
    assert torch.allclose(scale[r:r + n], torch.full((n,), lr_b / lr_dt, dtype=torch.float64))
    assert torch.allclose(scale[r + n:], torch.full((n,), lr_c / lr_dt, dtype=torch.float64))
    plans = {p.name: p for p in plan_hf(model, "mup-ssm", "adam", 0.01, build(32, 32))}
    assert plans["lm_head.weight"].lr == pytest.approx(0.01 / u)
    assert plans["embedding.weight"].lr == pytest.approx(0.01)


# ----------------------------------------------------------------------------- per-row learning rates
def _train(make_opt, params0, steps=5, seed=0):
    params = [p.clone().requires_grad_() for p in params0]
    opt = make_opt(params)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(4, params[0].shape[1], generator=g)
        loss = (params[0] @ x.T).sin().square().sum() + (params[1] ** 3).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [p.detach() for p in params]


@pytest.mark.parametrize("name,torch_opt,ours", [
    ("sgd", lambda p: torch.optim.SGD(p, lr=0.05), lambda g: RowScaledSGD(g, lr=0.05)),
    ("sgd-momentum-wd", lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.1),
     lambda g: RowScaledSGD(g, lr=0.05, momentum=0.9, weight_decay=0.1)),
    ("sgd-nesterov", lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
     lambda g: RowScaledSGD(g, lr=0.05, momentum=0.9, nesterov=True)),
    ("adam-wd", lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1),
     lambda g: RowScaledAdam(g, lr=0.01, weight_decay=0.1)),
    ("adamw", lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
     lambda g: RowScaledAdam(g, lr=0.01, weight_decay=0.1, decoupled=True)),
])
def test_with_every_row_scale_1_the_optimizers_are_torchs_bit_for_bit(name, torch_opt, ours):
    p0 = [torch.randn(6, 5, generator=torch.Generator().manual_seed(1)), torch.randn(5)]
    theirs = _train(torch_opt, p0)
    mine = _train(lambda ps: ours([{"params": [ps[0]], ROW_SCALE: torch.ones(6, dtype=torch.float64)},
                                   {"params": [ps[1]]}]), p0)
    assert all(torch.equal(a, b) for a, b in zip(theirs, mine, strict=True)), name


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
def test_a_row_scale_acts_as_that_rows_own_learning_rate(kind):
    """Rows scaled by s train as if each row were its own parameter with learning rate lr·s."""
    scale = torch.tensor([1.0, 0.5, 0.25, 2.0, 1.0, 0.125], dtype=torch.float64)
    p0 = [torch.randn(6, 5, generator=torch.Generator().manual_seed(2)), torch.randn(5)]
    kwargs = {"sgd": dict(momentum=0.9, weight_decay=0.01), "adam": dict(weight_decay=0.01),
              "adamw": dict(weight_decay=0.01, decoupled=True)}[kind]
    cls = RowScaledSGD if kind == "sgd" else RowScaledAdam
    lr = 0.05
    scaled = _train(lambda ps: cls([{"params": [ps[0]], ROW_SCALE: scale}, {"params": [ps[1]]}], lr=lr, **kwargs), p0)

    # the same problem with each row a parameter of its own, at learning rate lr·s
    params = [r.clone().requires_grad_() for r in p0[0]] + [p0[1].clone().requires_grad_()]
    opt = cls([{"params": [p], "lr": lr * float(s)} for p, s in zip(params[:6], scale, strict=True)]
              + [{"params": [params[6]]}], lr=lr, **kwargs)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.randn(4, 5, generator=g)
        w = torch.stack(params[:6])
        loss = (w @ x.T).sin().square().sum() + (params[6] ** 3).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.allclose(torch.stack(params[:6]).detach(), scaled[0], rtol=1e-6, atol=1e-7)
    assert torch.allclose(params[6].detach(), scaled[1], rtol=1e-6, atol=1e-7)


def test_a_row_scale_of_the_wrong_length_is_refused():
    p = torch.zeros(4, 3, requires_grad=True)
    with pytest.raises(ConfigError, match="one factor per row"):
        RowScaledAdam([{"params": [p], ROW_SCALE: torch.ones(3)}])


# ----------------------------------------------------------------------------- the recomputed scan
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_recomputed_y_is_the_mixers_own_scan_output(dtype):
    """Pre-gate: ssmscope's scan on the hooked inputs = transformers' own scan function on them;
    gated: what the observer checks on every armed forward (y ⊙ SiLU(z) = out_proj's input)."""
    from ssmscope.ssm.scan import selective_scan

    modeling_mamba = importlib.import_module("transformers.models.mamba.modeling_mamba")
    model = build(64, 32).to(dtype)
    mixer = model.backbone.layers[1].mixer
    seen = {}
    mixer.x_proj.register_forward_hook(lambda m, a, o: seen.update(u=a[0].detach(), xdbc=o.detach()))
    mixer.out_proj.register_forward_pre_hook(lambda m, a: seen.update(gated=a[0].detach()))
    mixer.in_proj.register_forward_hook(lambda m, a, o: seen.update(z=o[..., 64:].detach()))
    with torch.no_grad():
        model(input_ids=ids()[:, :-1], use_cache=False)
    w = HFWidths.of(model)
    dt_low, B, C = torch.split(seen["xdbc"], [w.rank, w.n_x, w.n_x], dim=-1)
    dt = dt_low @ mixer.dt_proj.weight.T
    A = -torch.exp(mixer.A_log.detach())
    ours = selective_scan(seen["u"], dt, A, B, C, mixer.D.detach(), mixer.dt_proj.bias.detach(),
                          discretization="euler", backend="reference")
    theirs = modeling_mamba.mamba_selective_scan(
        seen["u"].transpose(1, 2), (dt_low @ mixer.dt_proj.weight.T).transpose(1, 2), -torch.exp(mixer.A_log.float()),
        B.transpose(1, 2), C.transpose(1, 2), D=mixer.D.float(), z=None, delta_bias=mixer.dt_proj.bias.float(),
        delta_softplus=True).transpose(1, 2)
    scale = theirs.abs().max()
    assert ((ours - theirs).abs().max() / scale) < 1e-5
    assert ((ours * F.silu(seen["z"]) - seen["gated"]).abs().max() / seen["gated"].abs().max()) < 1e-5
    with HFObserver(model, scan="reference") as obs:
        obs.arm(0)
        lm_loss(model, ids()).backward()
        obs.collect()
    assert all(e is not None and e < 1e-5 for e in obs.check_errors)


def test_a_forward_that_is_not_transformers_scan_is_caught():
    model = build(32, 32)
    # Something between the scan and out_proj that is not transformers' Mamba: the recomputation cannot match.
    model.backbone.layers[0].mixer.out_proj.register_forward_pre_hook(lambda m, a: (a[0] * 1.5,))
    with HFObserver(model) as obs:
        obs.arm(0)
        with pytest.raises(RecomputeMismatch, match="layer 0"):
            lm_loss(model, ids())


# ----------------------------------------------------------------------------- same records as MambaLM
def _twins(dtype=torch.float64):
    """An ssmscope MambaLM and a transformers Mamba with identical weights (copied name by name)."""
    torch.manual_seed(0)
    cfg = MambaConfig(d_model=16, n_layers=2, d_state=8, discretization="euler", vocab_size=VOCAB, scan="reference",
                      tie_readout=False)  # the adapter takes untied transformers models (tie_word_embeddings=False)
    lm = MambaLM(cfg)
    apply_preset(lm, cfg, load_preset("sp"), "sgd", 0.1, seed=0)
    hf = HFMamba({"num_hidden_layers": 2, "vocab_size": VOCAB, "residual_in_fp32": False})(32, 8)
    lm, hf = lm.to(dtype), hf.to(dtype)
    ours, theirs = dict(lm.named_parameters()), dict(hf.named_parameters())
    with torch.no_grad():
        for cp in canonical_params(hf):
            cp.view(theirs).copy_(ours[cp.name])
    return lm, hf


def _records(model, observer_cls, steps=3, **kw):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = {}
    with observer_cls(model, **kw) as obs:
        for step in range(steps):
            obs.arm(step)
            loss = lm_loss(model, ids())
            opt.zero_grad()
            loss.backward()
            out.update({(r["step"], r["layer"], r["site"], r["quantity"], r["group"]): r for r in obs.collect()})
            opt.step()
    return out


def test_an_ssmscope_mambalm_and_a_transformers_mamba_with_the_same_weights_give_the_same_records():
    lm, hf = _twins(torch.float64)
    assert lm_loss(lm, ids()).item() == pytest.approx(lm_loss(hf, ids()).item(), rel=1e-6)
    ours = _records(lm, Observer)
    theirs = _records(hf, HFObserver, scan="reference")
    assert ours.keys() == theirs.keys()
    sites = {k[2] for k in ours}
    assert {"x", "y", "cx", "block_out", "grad_y", "grad_x", "param"} <= sites
    assert {k[3] for k in ours} >= {"value", "delta_init"} and {k[0] for k in ours} == {0, 1, 2}
    for key, a in ours.items():
        b = theirs[key]
        for c in ("count", "n_tokens", "n_channels"):
            assert a[c] == b[c], (key, c)
        for c in ("sumsq", "maxabs", "token_norm_sum", "channel_norm_sum"):
            if key[0] == 0 and key[2] == "param":  # the same tensors: the same sums, exactly
                assert a[c] == b[c], (key, c)
            else:  # transformers computes its norms, A, D and Δ's bias in fp32 even in an fp64 model
                assert b[c] == pytest.approx(a[c], rel=1e-5, abs=1e-12), (key, c)
