"""transformers' Mamba-2 under ssmscope (#28): the same numbers as Mamba2LM (logits, every gradient), the adapter's
plan and per-row learning rates, the observer's recomputed scan and its records against Mamba2Observer's, and
coord_check on both Mamba-2 families into the store."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.mamba2 import Mamba2Config, Mamba2LM, split_state_dict
from ssmscope.ssm.roles import Role

# transformers is imported only when a test runs (see tests/test_hf_adapter.py: triton's interpreter mode).
pytestmark = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                reason="transformers is not installed (pip install -e '.[hf]')")

F64 = torch.float64
VOCAB = 37
HF_CONFIG = {"num_hidden_layers": 2, "vocab_size": VOCAB, "head_dim": 8, "n_groups": 2, "chunk_size": 5,
             "residual_in_fp32": False}


def factory():
    from ssmscope.ssm.adapters.hf_mamba2 import HFMamba2

    return HFMamba2(HF_CONFIG)


def build(n_u: int, n_x: int, seed: int = 0):
    torch.manual_seed(seed)
    return factory()(n_u, n_x)


def twin(hf) -> Mamba2LM:
    """Mamba2LM with the transformers model's weights (in_proj fused → split), in its dtype."""
    c = hf.config
    cfg = Mamba2Config(d_model=c.hidden_size, n_layers=c.num_hidden_layers, vocab_size=c.vocab_size,
                       d_state=c.state_size, headdim=c.head_dim, expand=c.expand, ngroups=c.n_groups,
                       chunk_size=c.chunk_size, norm="group", tie_readout=False, norm_eps=c.layer_norm_epsilon)
    ours = Mamba2LM(cfg).to(next(hf.parameters()).dtype)
    state = {k.removeprefix("backbone.").replace("embeddings.", "embedding."): v for k, v in hf.state_dict().items()}
    ours.load_state_dict(split_state_dict(state, cfg), strict=True)
    return ours


def ids(seed: int = 0, batch: int = 2, length: int = 11) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length + 1), generator=torch.Generator().manual_seed(seed))


def loss_of(model, batch):
    logits = model(batch[:, :-1]) if isinstance(model, Mamba2LM) else model(input_ids=batch[:, :-1],
                                                                             use_cache=False).logits
    return F.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))


def perturbed(n_u=32, n_x=8):
    """An fp64 transformers Mamba-2 with every parameter moved off its init (no slot passes by coincidence)."""
    hf = build(n_u, n_x).to(F64)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return hf


# ----------------------------------------------------------------------------- the same model
def test_logits_and_every_gradient_equal_mamba2lm():
    from ssmscope.ssm.adapters.hf_mamba2 import canonical_params

    hf = perturbed()
    ours = twin(hf)
    batch = ids()
    hf.train()
    loss_of(hf, batch).backward()
    loss_of(ours, batch).backward()
    with torch.no_grad():
        assert (hf(batch[:, :-1]).logits - ours(batch[:, :-1])).abs().max().item() <= 1e-5
    mine = dict(ours.named_parameters())
    hf_params = dict(hf.named_parameters())
    checked = 0
    for cp in canonical_params(hf):
        theirs = hf_params[cp.hf_name].grad if cp.rows is None else hf_params[cp.hf_name].grad[cp.rows]
        assert (mine[cp.name].grad - theirs).abs().max().item() <= 1e-5, cp.name
        checked += 1
    assert checked == len(mine)  # every Mamba2LM parameter, in_proj's five blocks included


# ----------------------------------------------------------------------------- the adapter
def test_the_adapters_plan_and_rows_under_mamba2_mup_at_4x_width():
    from ssmscope.ssm.adapters.hf import apply_preset_hf, base_scales, plan_hf
    from ssmscope.ssm.adapters.hf_mamba2 import HFMamba2Widths

    base, model = build(64, 16, seed=1), build(256, 16, seed=1)
    sigma0 = base_scales(base)
    groups = apply_preset_hf(model, "mamba2-mup", "adam", 0.01, base=base)
    after = base_scales(model)
    for role in (Role.IN_PROJ_Z, Role.IN_PROJ_X, Role.IN_PROJ_B, Role.IN_PROJ_C, Role.IN_PROJ_DT, Role.OUT_PROJ):
        assert after[role] == pytest.approx(sigma0[role] / 2, rel=1e-6), role  # init N_u^-1/2 at 4x
    assert after[Role.READOUT] == pytest.approx(sigma0[Role.READOUT] / 4, rel=1e-6)  # µP readout 1/N_u
    assert after[Role.EMBEDDING] == pytest.approx(sigma0[Role.EMBEDDING], rel=1e-6)
    # in_proj: one group per layer at LR/4 (Adam, N_u^-1); under mamba2-mup every block shares it: row_scale 1
    ip = next(g for g in groups if g["name"] == "layers.0.mixer.in_proj.weight")
    assert ip["role"] == "in_proj" and ip["lr"] == pytest.approx(0.01 / 4)
    assert torch.equal(ip["row_scale"], torch.ones(model.backbone.layers[0].mixer.in_proj.weight.shape[0], dtype=F64))
    plans = {p.name: p for p in plan_hf(model, "mamba2-mup", "adam", 0.01, base)}
    assert plans["layers.1.mixer.conv1d.weight"].lr == pytest.approx(0.01)
    assert plans["layers.1.mixer.A_log"].init_scale is None  # structural: kept as transformers initialised it
    rows = HFMamba2Widths.of(model).in_proj_rows()
    assert [(rows[b].start, rows[b].stop) for b in ("z", "x", "B", "C", "dt")] == [
        (0, 256), (256, 512), (512, 544), (544, 576), (576, 608)]  # G·N = 2·16, 256/8 = 32 heads


def test_per_row_learning_rates_on_the_fused_in_proj(tmp_path):
    """A preset giving in_proj's dt block the base LR (a vector-like rule) and the other blocks LR/N_u: the fused
    weight's row_scale is 1 on z, x, B, C and 4 on the dt rows at 4x width (relative to the group's LR/4)."""
    from importlib.resources import files

    from ssmscope.ssm.adapters.hf import apply_preset_hf

    text = files("ssmscope.ssm").joinpath("presets/mamba2-mup.toml").read_text()
    head, rest = text.split("[roles.in_proj_dt]", 1)
    rest = rest.replace("lr = {sgd = {}, adam = {n_u = -1}}", "lr = {sgd = {}, adam = {}}", 1)
    path = tmp_path / "dt-vector.toml"
    path.write_text(head.replace('name = "mamba2-mup"', 'name = "dt-vector"') + "[roles.in_proj_dt]" + rest)
    groups = apply_preset_hf(build(256, 16), str(path), "adam", 0.01, base=build(64, 16))
    ip = next(g for g in groups if g["name"] == "layers.1.mixer.in_proj.weight")
    assert ip["lr"] == pytest.approx(0.01 / 4)
    expected = torch.ones(2 * 256 + 2 * 2 * 16 + 32, dtype=F64)
    expected[-32:] = 4.0  # the 32 dt rows (one per head) at the base LR
    assert torch.allclose(ip["row_scale"], expected)
    head_group = next(g for g in groups if g["name"] == "lm_head.weight")
    assert head_group["lr"] == pytest.approx(0.01 / 4)


def test_what_cannot_be_put_under_a_preset_is_refused_in_one_line():
    from ssmscope.ssm.adapters.hf import apply_preset_hf
    from ssmscope.ssm.adapters.hf_mamba2 import HFMamba2

    with pytest.raises(ConfigError, match="is for family mamba, the model is mamba2"):
        apply_preset_hf(build(64, 16), "sp", "adam", 0.01)
    tied = HFMamba2({**HF_CONFIG, "tie_word_embeddings": True})(64, 16)
    with pytest.raises(ConfigError, match="tie_word_embeddings=False"):
        apply_preset_hf(tied, "mamba2-sp", "adam", 0.01)
    with pytest.raises(ConfigError, match="widths are set per call"):
        HFMamba2({"num_heads": 4})
    with pytest.raises(ConfigError, match="not a multiple of n_groups"):
        factory()(24, 16)  # 3 heads, 2 groups


# ----------------------------------------------------------------------------- the observer
def _records(observer_cls, model, steps=2, **kw):
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    out = []
    with observer_cls(model, **kw) as obs:
        for step in range(steps):
            obs.arm(step)
            opt.zero_grad()
            loss_of(model, ids()).backward()
            out += obs.collect()
            opt.step()
    return obs, {(r["step"], r["layer"], r["site"], r["quantity"], r["group"]): r for r in out}


def test_the_observers_records_equal_mamba2observers_on_the_same_weights():
    from ssmscope.probes.hf_mamba2 import HFMamba2Observer
    from ssmscope.probes.mamba2 import Mamba2Observer

    hf = perturbed()
    hf.train()
    ours = twin(hf)
    obs, theirs = _records(HFMamba2Observer, hf, state_prev=True)
    _, mine = _records(Mamba2Observer, ours, state_prev=True)
    assert set(theirs) == set(mine)
    assert {k[2] for k in mine} >= {"x", "y", "cx", "block_out", "grad_y", "grad_x", "in_proj", "param"}
    assert {k[4] for k in mine if k[2] == "in_proj"} == {"z", "x", "B", "C", "dt"}
    assert {k[1] for k in mine if k[2] == "x"} == {0, 1}
    for key, r in mine.items():
        for col, v in r.items():
            if isinstance(v, float) and col not in ("step",):
                assert theirs[key][col] == pytest.approx(v, rel=1e-4, abs=1e-7), (key, col)
    assert all(e is not None and e < 1e-5 for e in obs.check_errors)


def test_a_wrong_recomputation_is_caught(monkeypatch):
    from ssmscope.probes.hf_mamba2 import HFMamba2Observer, RecomputeMismatch

    model = build(32, 8)
    mixer = model.backbone.layers[1].mixer
    real = HFMamba2Observer._recompute

    def wrong_d(self, view):  # the recomputation reads a D that is not the model's
        if view.mixer is mixer:
            monkeypatch.setattr(mixer, "D", torch.nn.Parameter(mixer.D.detach() + 1.0))
        return real(self, view)

    with HFMamba2Observer(model) as obs:
        obs.arm(0)
        loss_of(model, ids()).backward()
        obs.collect()  # the true recomputation passes
        monkeypatch.setattr(HFMamba2Observer, "_recompute", wrong_d)
        obs.arm(1)
        with pytest.raises(RecomputeMismatch, match="layer 1"):
            loss_of(model, ids())


# ----------------------------------------------------------------------------- coord_check
def test_coord_check_on_transformers_mamba2_gives_mamba2lms_records():
    import transformers

    from ssmscope.coord import coord_check
    from ssmscope.recipe import Grid, Training

    batch = ids(length=9)
    hf_cfg = transformers.Mamba2Config(**HF_CONFIG, hidden_size=16, num_heads=4, state_size=8,  # widths: per run
                                       tie_word_embeddings=False)
    grid, training = Grid(presets=["mamba2-sp-hf"], lrs=[0.01]), Training(steps=2)
    frame = coord_check(hf_cfg, [(64, 16), (128, 16)], batch, grid, training)
    assert set(frame["init_base"]) == {"user"} and set(frame["model"]) == {"mamba2"}
    assert set(frame.filter(frame["site"] == "x")["layer"]) == {0, 1}
    assert set(frame.filter(frame["site"] == "in_proj")["group"]) == {"z", "x", "B", "C", "dt"}

    # the same numbers from a callable handing over transformers' models (the records against Mamba2LM's on the
    # same weights: test_the_observers_records_equal_mamba2observers_on_the_same_weights)
    def make_hf(n_u, n_x):
        return factory()(n_u, n_x)

    other = coord_check(make_hf, [(64, 16), (128, 16)], batch, grid, training)
    keys = ["n_u", "step", "layer", "site", "quantity", "group"]
    a, b = frame.sort(keys), other.sort(keys)
    assert a.select(keys).equals(b.select(keys))
    for col in ("sumsq", "maxabs", "token_norm_sum", "channel_norm_sum"):
        assert ((a[col] - b[col]).abs() <= 1e-9 * b[col].abs()).all(), col


def test_coord_check_on_a_mamba2config_template_saves_mamba2_runs(tmp_path):
    from ssmscope import store
    from ssmscope.coord import coord_check
    from ssmscope.recipe import Grid, Training

    template = Mamba2Config(d_model=8, n_layers=1, vocab_size=VOCAB, d_state=8, headdim=16, chunk_size=4)
    frame, runs = coord_check(template, [(32, 8), (64, 8)], ids(length=7),
                              Grid(presets=["mamba2-sp", "mamba2-mup"]), Training(steps=2), return_runs=True)
    assert set(frame["site"]) >= {"x", "y", "in_proj", "grad_x"} and set(frame["model"]) == {"mamba2"}
    db = tmp_path / "m2.duckdb"
    store.save(frame, db, runs=runs)
    back = store.load(db)
    assert set(back["model"]) == {"mamba2"} and set(back["preset"]) == {"mamba2-sp", "mamba2-mup"}
    with pytest.raises(ConfigError, match="Euler"):
        coord_check(template, [32, 64], ids(length=7), Grid(presets=["mamba2-sp"], discretizations=["zoh"]))
