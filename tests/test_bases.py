"""Init bases against the originals: state-spaces/mamba's rules, mambapy, transformers' MambaForCausalLM.

The `mamba` base is checked against a table of state-spaces/mamba's rules written here from its
source (mamba_ssm/modules/mamba_simple.py and models/mixer_seq_simple.py at commit e9594ce; the
package itself does not install without CUDA), and against mambapy where mambapy follows the same
rules (its MambaBlock). The `hf` base is checked against an instantiated transformers model.
Statistics are judged against their sampling error: a sample variance s² of n draws has standard
error √((μ₄ − σ⁴)/n), a sample kurtosis about √(24/n); uniform's kurtosis is 1.8, normal's 3.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from ssmscope.runs.cli.main import app
from ssmscope.runs.sweeps.spec import RunConfig, load_spec, parse_spec
from ssmscope.ssm import ConfigError, MambaConfig, MambaLM, apply_preset, load_preset, plan
from ssmscope.ssm.bases import LEGACY_BASE, builtin_base_names, load_base
from ssmscope.ssm.presets import original_exponents, original_preset
from ssmscope.ssm.roles import ROLES_OF_FAMILY, STRUCTURAL_RULES, Family, InitKind, Role

Z = 5.0  # tolerance in standard errors (a false alarm rate below 1e-6 per check)


# ----------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Rule:
    """One parameter's init: `family` in normal, uniform, constant, s4d, dt, tied; `scale` is the
    normal's std, the uniform's bound, the constant's value, or the tied parameter's name."""

    family: str
    scale: float | str | None = None


def kurtosis(v: torch.Tensor) -> float:
    c = v - v.mean()
    return ((c**4).mean() / (c**2).mean() ** 2).item()


def assert_follows(v: torch.Tensor, rule: Rule, cfg: MambaConfig, what: str) -> None:
    """The sample `v` fits `rule` within sampling error (or exactly, for deterministic inits)."""
    v = v.detach().double().flatten()
    n = v.numel()
    if rule.family == "constant":
        assert torch.all(v == rule.scale), what
    elif rule.family == "s4d":  # A_log[i, n] = log(n + 1)
        n_state = cfg.d_state
        expected = torch.log(torch.arange(1, n_state + 1, dtype=torch.float64)).repeat(cfg.d_inner)
        assert torch.allclose(v, expected), what
    elif rule.family == "dt":  # softplus(bias) log-uniform in [dt_min, dt_max]
        log_dt = torch.log(F.softplus(v))
        lo, hi = math.log(cfg.dt_min), math.log(cfg.dt_max)
        assert log_dt.min() >= lo - 1e-5 and log_dt.max() <= hi + 1e-5, what
        # mean of U(lo, hi) has std (hi − lo)/√(12 n)
        assert abs(log_dt.mean().item() - (lo + hi) / 2) <= Z * (hi - lo) / math.sqrt(12 * n), what
    elif rule.family in ("normal", "uniform"):
        if rule.family == "uniform":
            bound = float(rule.scale)
            var, mu4, kurt = bound**2 / 3, bound**4 / 5, 1.8
            assert v.abs().max() <= bound * (1 + 1e-6), f"{what}: max |w| {v.abs().max():.4g} > bound {bound:.4g}"
            if n >= 2000:  # the extremes reach the bound
                assert v.abs().max() >= bound * (1 - 10 / n), what
        else:
            var = float(rule.scale) ** 2
            mu4, kurt = 3 * var**2, 3.0
        s2 = v.var(unbiased=False).item()
        assert abs(s2 - var) <= Z * math.sqrt((mu4 - var**2) / n), (
            f"{what}: std {math.sqrt(s2):.5g}, expected {math.sqrt(var):.5g} (n={n})")
        assert abs(v.mean().item()) <= Z * math.sqrt(var / n), what
        if n >= 2000:  # the family: uniform's kurtosis 1.8, normal's 3 (apart by > 5 s.e. from n = 2000)
            assert abs(kurtosis(v) - kurt) <= Z * math.sqrt(24 / n), f"{what}: kurtosis {kurtosis(v):.3f}"
    else:  # pragma: no cover
        raise AssertionError(rule)


def assert_same_law(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    """Two samples from one zero-mean law: equal variances within their joint sampling error,
    same support bound and kurtosis (deterministic tensors must be equal)."""
    a, b = ours.detach().double().flatten(), theirs.detach().double().flatten()
    assert a.shape == b.shape, what
    if a.std() == 0 or b.std() == 0:
        assert torch.allclose(a, b), what
        return

    def var_se(v: torch.Tensor) -> float:
        c = v - v.mean()
        return math.sqrt(max(((c**4).mean() - (c**2).mean() ** 2).item(), 1e-300) / v.numel())

    va, vb = a.var(unbiased=False).item(), b.var(unbiased=False).item()
    assert abs(va - vb) <= Z * math.hypot(var_se(a), var_se(b)), (
        f"{what}: std {math.sqrt(va):.5g} vs original {math.sqrt(vb):.5g}")
    if a.numel() >= 2000:
        assert abs(kurtosis(a) - kurtosis(b)) <= Z * math.sqrt(48 / a.numel()), what
        if kurtosis(b) < 2.4:  # bounded (uniform): the same bound, reached by both
            assert a.abs().max() == pytest.approx(b.abs().max().item(), rel=0.02), what


# ----------------------------------------------------------------------------- state-spaces/mamba


def mamba_rules(cfg: MambaConfig) -> dict[str, Rule]:
    """state-spaces/mamba's init of every parameter (name without `layers.<k>.`), from its source:
    MambaLMHeadModel → MixerModel(_init_weights) → Mamba (mamba_simple.py), no MLP, tied embeddings."""
    d, ed, r, w = cfg.d_model, cfg.d_inner, cfg.rank, cfg.d_conv
    kaiming = lambda fan_in: Rule("uniform", fan_in**-0.5)  # noqa: E731 - nn.Linear/Conv1d default
    return {
        "embedding.weight": Rule("normal", 0.02),  # _init_weights: normal_(std=initializer_range)
        "norm.weight": Rule("constant", 1.0),
        "mixer.in_proj.weight": kaiming(d),
        "mixer.conv1d.weight": kaiming(w),  # fan_in = in_channels/groups · kernel_size
        "mixer.conv1d.bias": kaiming(w),  # not an nn.Linear bias: kept
        "mixer.x_proj.dt.weight": kaiming(ed),  # one nn.Linear(d_inner, R + 2N)
        "mixer.x_proj.B.weight": kaiming(ed),
        "mixer.x_proj.C.weight": kaiming(ed),
        "mixer.dt_proj.weight": Rule("uniform", r**-0.5),  # dt_init_std = dt_rank^-0.5 · dt_scale
        "mixer.dt_proj.bias": Rule("dt"),
        "mixer.A_log": Rule("s4d"),
        "mixer.D": Rule("constant", 1.0),
        "mixer.out_proj.weight": Rule("uniform", ed**-0.5 / math.sqrt(cfg.n_layers)),  # / √(1 · n_layer)
        "norm_f.weight": Rule("constant", 1.0),
        "lm_head.weight": Rule("tied", "embedding.weight"),  # tie_weights()
    }


def _strip(name: str) -> str:
    return name.split(".", 2)[2] if name.startswith("layers.") else name


CONFIGS = [
    MambaConfig(d_model=64, d_state=16, n_layers=2),
    MambaConfig(d_model=256, d_state=32, n_layers=4, discretization="euler"),
    MambaConfig(d_model=128, d_state=64, n_layers=3, d_conv=3),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"d{c.d_model}-N{c.d_state}-L{c.n_layers}-W{c.d_conv}")
def test_sp_init_follows_state_spaces_mamba_rules(cfg):
    model = MambaLM(cfg)
    apply_preset(model, cfg, load_preset("sp"), "adam", 1e-3, seed=7)
    rules = mamba_rules(cfg)
    params = dict(model.named_parameters(remove_duplicate=False))
    assert {_strip(n) for n in params} == set(rules)
    for name, p in params.items():
        rule = rules[_strip(name)]
        if rule.family == "tied":
            assert p is params[rule.scale], name
        else:
            assert_follows(p, rule, cfg, name)
    # the tied head is the embedding's matrix: logits = norm_f(h) · Eᵀ
    ids = torch.randint(0, cfg.vocab_size, (2, 5))
    with torch.no_grad():
        h = model.embedding(ids)
        for block in model.layers:
            h = block(h)
        assert torch.allclose(model(ids), model.norm_f(h) @ model.embedding.weight.T, atol=1e-6)


@pytest.mark.parametrize("preset", ["mup", "mup-ssm"])
def test_mup_presets_are_mambas_init_at_the_base_width(preset):
    cfg = MambaConfig(d_model=16, d_state=32, n_layers=3)  # N_u0 = N_x0 = 32
    model = MambaLM(cfg)
    apply_preset(model, cfg, load_preset(preset), "sgd", 0.1, seed=2)
    rules = mamba_rules(cfg)
    for name, p in model.named_parameters():
        if p.numel() >= 64:
            assert_follows(p, rules[_strip(name)], cfg, name)
    assert model.lm_head.weight is model.embedding.weight and model.lm_head.multiplier == 1.0


def test_the_constants_are_mambas_not_the_old_ones():
    cfg = MambaConfig(d_model=256, d_state=16, n_layers=3)
    rows = {r.name: r for r in plan(MambaLM(cfg), cfg, load_preset("sp"), "adam", 1e-3)}
    assert rows["layers.0.mixer.in_proj.weight"].init_kind == InitKind.UNIFORM
    assert rows["layers.0.mixer.in_proj.weight"].init_scale == pytest.approx((3 * 256) ** -0.5)  # not 256^-1/2
    assert rows["layers.0.mixer.x_proj.B.weight"].init_scale == pytest.approx((3 * 512) ** -0.5)
    assert rows["layers.0.mixer.out_proj.weight"].init_scale == pytest.approx((3 * 512 * 3) ** -0.5)
    assert rows["layers.0.mixer.dt_proj.weight"].init_scale == pytest.approx((3 * 16) ** -0.5)
    assert rows["layers.0.mixer.conv1d.bias"].init_scale == pytest.approx(12**-0.5)
    assert rows["embedding.weight"].init_scale == 0.02 and rows["embedding.weight"].init_kind == InitKind.NORMAL
    assert rows["lm_head.weight"].init_kind == InitKind.TIED and rows["lm_head.weight"].multiplier == 1.0
    old = {r.name: r for r in plan(MambaLM(cfg), cfg, load_preset("sp"), "adam", 1e-3, base=LEGACY_BASE)}
    assert old["layers.0.mixer.in_proj.weight"].init_scale == pytest.approx(256**-0.5)
    assert old["embedding.weight"].init_scale == 1.0
    assert old["lm_head.weight"].init_kind == InitKind.NORMAL
    assert old["lm_head.weight"].init_scale == pytest.approx(256**-0.5)


def test_legacy_base_reproduces_the_old_draws_bit_for_bit():
    """Sums and maxima of tensors drawn by the code before bases existed (commit e8014c9)."""
    cfg = MambaConfig(d_model=64, d_state=24, n_layers=2)
    model = MambaLM(cfg)
    apply_preset(model, cfg, load_preset("sp"), "sgd", 0.01, seed=3, base=LEGACY_BASE)
    sd = model.state_dict()
    old = {"embedding.weight": (-50.65966295643739, 3.8078067302703857),
           "layers.1.mixer.in_proj.weight": (35.23791261569795, 0.4646766483783722),
           "layers.0.mixer.dt_proj.bias": (-596.6566243171692, 6.8984456062316895),
           "lm_head.weight": (-11.68171699393497, 0.5668157935142517),
           "layers.1.mixer.out_proj.weight": (6.055760013191616, 0.3267349600791931)}
    for name, (total, peak) in old.items():
        assert sd[name].double().sum().item() == total, name
        assert sd[name].double().abs().max().item() == peak, name
    assert not model.readout_tied


def test_sp_exponents_are_mambas_own_width_laws():
    """SP = Mamba at every width, not only at the base width: sp's init exponents are the fan-in
    laws of the `mamba` base (and of the legacy one); hf's in_proj and x_proj do not shrink."""
    sp = load_preset("sp")
    for base in ("mamba", LEGACY_BASE):
        exps = original_exponents(load_base(base))
        for disc in ("zoh", "euler"):
            for role in ROLES_OF_FAMILY[Family.MAMBA]:
                if role not in STRUCTURAL_RULES:
                    assert sp.scaling(role, disc).init == exps[role], (base, role)
    assert sp.tied_readout_mult is not None and sp.tied_readout_mult.n_u == 0
    hf = original_exponents(load_base("hf"))
    assert hf[Role.IN_PROJ].n_u == 0 and hf[Role.X_PROJ_B].n_u == 0 and hf[Role.OUT_PROJ].n_u == -0.5


@pytest.mark.parametrize("d_model", [64, 256])
def test_original_preset_of_mamba_equals_sp(d_model):
    cfg = MambaConfig(d_model=d_model, d_state=16, n_layers=2)
    a = plan(MambaLM(cfg), cfg, load_preset("sp"), "adam", 1e-3)
    b = plan(MambaLM(cfg), cfg, original_preset("mamba"), "adam", 1e-3)
    assert [(r.name, r.init_kind, r.init_scale, r.lr, r.multiplier) for r in a] == \
           [(r.name, r.init_kind, pytest.approx(r.init_scale) if r.init_scale else r.init_scale, r.lr, r.multiplier)
            for r in b]


# ----------------------------------------------------------------------------- mambapy


@pytest.mark.parametrize("d_model,d_state", [(64, 16), (256, 32)])
def test_mamba_base_matches_mambapy_blocks(d_model, d_state):
    """mambapy's Mamba keeps mamba_simple's per-block init (PyTorch defaults, uniform dt_proj, S4D A,
    log-uniform Δ); its stack has no out_proj rescale, which is state-spaces/mamba's at n_layer = 1.
    (mambapy's LM class re-draws every Linear N(0, 0.02²) instead: not compared.)"""
    mambapy = pytest.importorskip("mambapy.mamba", reason="pip install mambapy to compare with it")
    torch.manual_seed(11)
    theirs = mambapy.Mamba(mambapy.MambaConfig(d_model=d_model, n_layers=1, d_state=d_state))
    cfg = MambaConfig(d_model=d_model, d_state=d_state, n_layers=1)
    ours = MambaLM(cfg)
    apply_preset(ours, cfg, load_preset("sp"), "adam", 1e-3, seed=5)
    mine = dict(ours.named_parameters())
    r, n = cfg.rank, d_state
    compared = 0
    for name, p in theirs.named_parameters():
        if name.endswith("x_proj.weight"):  # split like ssmscope: rows [R | N | N]
            prefix = name.removesuffix("x_proj.weight")
            for block, rows in zip(("dt", "B", "C"), p.split([r, n, n]), strict=True):
                assert_same_law(mine[f"{prefix}x_proj.{block}.weight"], rows, f"{name}[{block}]")
                compared += 1
        elif name.endswith("dt_proj.bias"):
            assert_follows(p, Rule("dt"), cfg, "mambapy " + name)
            assert_follows(mine[name], Rule("dt"), cfg, name)
            compared += 1
        else:
            assert_same_law(mine[name], p, name)
            compared += 1
    assert compared == 12  # A_log, D, in_proj, conv w/b, x_proj ×3, dt_proj w/b, out_proj, norm


# ----------------------------------------------------------------------------- transformers


def _hf_model(cfg: MambaConfig, tied: bool = True):
    transformers = pytest.importorskip("transformers", reason="pip install 'ssmscope[hf]' to compare with it")
    transformers.utils.logging.set_verbosity_error()
    torch.manual_seed(13)
    hf_cfg = transformers.MambaConfig(
        hidden_size=cfg.d_model, state_size=cfg.d_state, num_hidden_layers=cfg.n_layers, expand=cfg.expand,
        conv_kernel=cfg.d_conv, vocab_size=cfg.vocab_size, time_step_min=cfg.dt_min, time_step_max=cfg.dt_max,
        time_step_floor=cfg.dt_init_floor, tie_word_embeddings=tied)
    return transformers.MambaForCausalLM(hf_cfg)


def _hf_name(name: str) -> str:
    """transformers' parameter name → ssmscope's (x_proj handled by the caller)."""
    if name == "lm_head.weight":
        return name
    name = name.removeprefix("backbone.")
    return "embedding.weight" if name == "embeddings.weight" else name


def _compare_with_hf(ours: MambaLM, theirs, cfg: MambaConfig) -> None:
    mine = dict(ours.named_parameters(remove_duplicate=False))
    r, n = cfg.rank, cfg.d_state
    for name, p in theirs.named_parameters(remove_duplicate=False):
        local = _hf_name(name)
        if local.endswith("x_proj.weight"):
            prefix = local.removesuffix("x_proj.weight")
            for block, rows in zip(("dt", "B", "C"), p.split([r, n, n]), strict=True):
                assert_same_law(mine[f"{prefix}x_proj.{block}.weight"], rows, f"{name}[{block}]")
        elif local.endswith("dt_proj.bias"):
            assert_follows(p, Rule("dt"), cfg, "transformers " + name)
            assert_follows(mine[local], Rule("dt"), cfg, local)
        else:
            assert_same_law(mine[local], p, name)
    tied_theirs = theirs.lm_head.weight is theirs.backbone.embeddings.weight
    assert ours.readout_tied == tied_theirs


@pytest.mark.parametrize("d_model,d_state,n_layers", [(64, 16, 2), (256, 16, 3), (128, 32, 1)])
def test_hf_base_matches_transformers_mamba(d_model, d_state, n_layers):
    """The `hf` base with its own width laws (original_preset) is transformers' init at every width."""
    cfg = MambaConfig(d_model=d_model, d_state=d_state, n_layers=n_layers)
    theirs = _hf_model(cfg)
    ours = MambaLM(cfg)
    apply_preset(ours, cfg, original_preset("hf"), "adam", 1e-3, seed=3)
    _compare_with_hf(ours, theirs, cfg)


def test_every_preset_on_the_hf_base_is_transformers_mamba_at_the_base_width():
    cfg = MambaConfig(d_model=16, d_state=32, n_layers=2)
    theirs = _hf_model(cfg)
    for preset in ("sp", "mup", "mup-ssm"):
        ours = MambaLM(cfg)
        apply_preset(ours, cfg, load_preset(preset), "adam", 1e-3, seed=4, base="hf")
        _compare_with_hf(ours, theirs, cfg)


def test_hf_untied_readout_and_what_sp_does_to_hf_at_width():
    cfg = MambaConfig(d_model=64, d_state=16, n_layers=2, tie_readout=False)
    theirs = _hf_model(cfg, tied=False)
    ours = MambaLM(cfg)
    apply_preset(ours, cfg, original_preset("hf"), "adam", 1e-3, seed=3)
    _compare_with_hf(ours, theirs, cfg)
    # transformers keeps in_proj at N(0, 0.1²) at every width; sp on the hf base shrinks it with fan-in
    wide = MambaConfig(d_model=256, d_state=16, n_layers=2)
    rows = {r.name: r for r in plan(MambaLM(wide), wide, load_preset("sp"), "adam", 1e-3, base="hf")}
    assert rows["layers.0.mixer.in_proj.weight"].init_scale == pytest.approx(0.1 / 4)
    theirs_wide = _hf_model(wide)
    assert theirs_wide.backbone.layers[0].mixer.in_proj.weight.std().item() == pytest.approx(0.1, rel=0.02)


# ----------------------------------------------------------------------------- tied readout


def test_tied_readout_keeps_its_multiplier_and_one_parameter():
    cfg = MambaConfig(d_model=128, d_state=16, n_layers=1)  # N_u = 256: ratio 8
    model = MambaLM(cfg)
    groups = apply_preset(model, cfg, load_preset("mup-ssm"), "adam", 1e-3, seed=0)
    assert model.readout_tied and model.lm_head.multiplier == pytest.approx(1 / 8)
    assert len(groups) == sum(1 for _ in model.parameters())  # one group for the shared matrix
    assert sum(g["name"] == "embedding.weight" for g in groups) == 1
    ids = torch.randint(0, 256, (2, 6))
    with torch.no_grad():
        h = model.norm_f(model.layers[0](model.embedding(ids)))
        assert torch.allclose(model(ids), (h @ model.embedding.weight.T) / 8, atol=1e-6)
    # the legacy base unties the same model again and draws a readout of its own
    apply_preset(model, cfg, load_preset("mup-ssm"), "adam", 1e-3, seed=0, base=LEGACY_BASE)
    assert not model.readout_tied and model.lm_head.multiplier == 1.0
    assert model.lm_head.weight.std().item() == pytest.approx(16**-0.5 / 8, rel=0.1)  # d_model0^-1/2 · 8^-1


def test_tied_readout_mult_defaults_to_the_declared_effective_scale(tmp_path):
    text = load_preset_text("mup-ssm")
    tied = text[text.index("[roles.readout.tied]"):]
    text = text.replace(tied, "")
    path = tmp_path / "p.toml"
    path.write_text(text)
    p = load_preset(path)
    assert p.tied_readout_mult is None
    cfg = MambaConfig(d_model=64, d_state=16)
    row = next(r for r in plan(MambaLM(cfg), cfg, p, "adam", 1e-3) if r.name == "lm_head.weight")
    assert row.init_kind == InitKind.TIED and row.multiplier == pytest.approx(1 / 4)  # readout −1 − embedding 0


def load_preset_text(name: str) -> str:
    from importlib import resources

    return resources.files("ssmscope.ssm").joinpath("presets", f"{name}.toml").read_text()


# ----------------------------------------------------------------------------- runs record the base


def test_runs_record_the_base_and_new_sp_runs_get_new_ids():
    legacy = RunConfig(preset="sp", discretization="zoh", optimizer="adam", lr=0.01, seed=0, n_u=64, n_x=64)
    assert legacy.base == LEGACY_BASE
    assert legacy.run_id == "da9cdd2eea546b93"  # the id this config had before bases existed
    spec = load_spec("paper-figure")
    assert {r.base for r in spec.runs} == {"mamba"}
    new = next(r for r in spec.runs if r.preset == "sp")
    assert new.to_dict()["base"] == "mamba"
    from dataclasses import replace

    assert replace(new, base=LEGACY_BASE).run_id != new.run_id


def test_spec_grid_bases_override_the_presets_base():
    text = load_spec_text("smoke")
    data = tomllib.loads(text)
    data["grid"]["bases"] = [LEGACY_BASE, "hf"]
    spec = parse_spec(data, "x")
    assert spec.n_runs == 2 * load_spec("smoke").n_runs
    assert {r.base for r in spec.runs} == {LEGACY_BASE, "hf"}
    data["grid"]["bases"] = ["nope"]
    with pytest.raises(ConfigError, match=r"grid\.bases\[0\]='nope'"):
        parse_spec(data, "x")


def load_spec_text(name: str) -> str:
    from importlib import resources

    return resources.files("ssmscope.runs.sweeps").joinpath("specs", f"{name}.toml").read_text()


# ----------------------------------------------------------------------------- validation


def _base_text() -> str:
    from importlib import resources

    return resources.files("ssmscope.ssm").joinpath("presets", "bases", "mamba.toml").read_text()


def test_role_scales_give_an_adapter_the_base_rms_per_role():
    from ssmscope.ssm.bases import role_scales

    cfg = MambaConfig(d_model=64, d_state=16, n_layers=2)
    hf = role_scales(load_base("hf"), cfg)
    assert hf[Role.IN_PROJ] == 0.1 and hf[Role.CONV_BIAS] == 0.0 and Role.READOUT not in hf
    assert hf[Role.OUT_PROJ] == pytest.approx((3 * 128) ** -0.5) and Role.A_LOG not in hf
    mamba = role_scales(load_base("mamba"), MambaConfig(d_model=64, d_state=16, n_layers=2, tie_readout=False))
    assert mamba[Role.READOUT] == pytest.approx((3 * 64) ** -0.5)
    assert mamba[Role.OUT_PROJ] == pytest.approx((3 * 128 * 2) ** -0.5)


def test_builtin_bases_load():
    assert set(builtin_base_names()) >= {"mamba", "hf", LEGACY_BASE}
    for name in builtin_base_names():
        b = load_base(name)
        assert set(b.roles) == set(ROLES_OF_FAMILY[b.family]) and b.name == name


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('[roles.in_proj]        # nn.Linear(d_model, 2·d_inner, bias=False): PyTorch default, never re-drawn\n'
         'dist = "uniform"', '[roles.in_proj]\ndist = "gaussian"',
         r"roles\.in_proj\.dist='gaussian'; allowed: normal, uniform, constant, structural"),
        ("std = 0.02", "std = -0.02", r"roles\.embedding\.std=-0.02; allowed: a positive number"),
        ("std = 0.02", "std = 'small'", r"roles\.embedding\.std='small'; allowed: a number"),
        ("std = 0.02", "std = 0.02\nbound = 1", r"roles\.embedding\.bound: not used by dist normal"),
        ("std = 0.02", "std = 0.02\nfan_in_power = -1",
         r"roles\.embedding\.fan_in_power: role embedding has no fan-in"),
        ('rule = "s4d_real"', 'rule = "hippo"', r"roles\.A_log\.rule='hippo'; "
         "allowed: s4d_real, log_uniform_a, log_arange_heads"),
        ('dist = "constant"\nvalue = 1\n\n[roles.out_proj]',
         'dist = "structural"\nrule = "s4d_real"\n\n[roles.out_proj]',
         r"roles\.D\.dist='structural'; allowed for role D: normal, uniform, constant"),
        ("tied_readout = true", "tied_readout = 'yes'", r"base\.tied_readout='yes'; allowed: true or false"),
        ("tied_readout = true", "tied_readout = true\nembedding_std = 1", r"base\.embedding_std: unknown key"),
        ("[roles.norm]", "[roles.normalisation]", r"roles\.normalisation: unknown role"),
        ('bound = 1\nfan_in_power = "-1/2"\nn_layer_power = "-1/2"', 'fan_in_power = "-1/2"',
         r"roles\.out_proj: dist uniform needs one of std, bound"),
        ('value = 1\n\n[roles.readout]', 'value = 1\nwidth = 2\n\n[roles.readout]', r"roles\.norm\.width: unknown key"),
    ],
)
def test_bad_base_files_give_one_line_errors_naming_the_key(tmp_path, old, new, message):
    text = _base_text()
    assert old in text
    path = tmp_path / "bad-base.toml"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(ConfigError, match=message) as info:
        load_base(path)
    assert "\n" not in str(info.value)
    # a preset naming it fails the same way, and param show prints one line
    preset = tmp_path / "p.toml"
    preset.write_text(load_preset_text("sp").replace('base = "mamba"', 'base = "bad-base.toml"'))
    with pytest.raises(ConfigError, match=r"preset\.base"):
        load_preset(preset)
    result = CliRunner().invoke(app, ["param", "show", "sp", "--base", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0


def test_missing_role_and_unknown_base_name():
    text = _base_text()
    start = text.index("[roles.D]")
    cut = text[:start] + text[text.index("[roles.out_proj]"):]
    with pytest.raises(ConfigError, match=r"roles\.D: missing"):
        from ssmscope.ssm.bases import parse_base

        parse_base(tomllib.loads(cut), "cut.toml")
    with pytest.raises(ConfigError,
                       match=r"allowed: hf, hf-mamba2, mamba, mamba2, mamba2-zero-conv, ssmscope-v0 or a \.toml file"):
        load_base("mamba3")


def test_param_show_prints_distribution_std_and_base():
    result = CliRunner().invoke(app, ["param", "show", "sp", "--d-model", "64", "--base", "hf"])
    assert result.exit_code == 0, result.output
    assert "on base hf" in result.output and "normal" in result.output and "uniform" in result.output
    assert "tied" in result.output
    old = CliRunner().invoke(app, ["param", "show", "sp", "--d-model", "64", "--base", LEGACY_BASE])
    assert old.exit_code == 0 and "untied" in old.output and "tied (one tensor" not in old.output


# ----------------------------------------------------------------------------- the store keeps bases apart


def test_store_derives_init_base_and_fits_two_bases_of_one_preset_apart(tmp_path):
    """One store, one spec, sp drawn on two bases: the fits are per base (init_base is a key), old runs with
    no base in their config read as the legacy base, and init_base filters in SQL."""
    from conftest import tiny_spec_toml

    from ssmscope.runs.analysis.slopes import fit_slopes
    from ssmscope.runs.store import db as store
    from ssmscope.runs.store.schema import LEGACY_INIT_BASE
    from ssmscope.runs.sweeps.sweep import run_sweep

    assert LEGACY_INIT_BASE == LEGACY_BASE  # the store's literal is the model package's legacy base
    data = tomllib.loads(tiny_spec_toml(widths=(16, 32, 64)))
    data["grid"] |= {"presets": ["sp"], "bases": ["mamba", LEGACY_BASE]}
    db_path = tmp_path / "s.duckdb"
    run_sweep(parse_spec(data, "bases"), db_path, device="cpu", workers=1)
    frame = store.load_probe_frame(db_path)
    assert set(frame["init_base"]) == {"mamba", LEGACY_BASE}
    runs = store.load_runs(db_path)
    legacy_ids = set(runs.filter(runs["init_base"] == LEGACY_BASE)["run_id"])
    configs = {r.run_id: r for r in parse_spec(data, "bases").runs}
    assert legacy_ids and all(configs[i].base == LEGACY_BASE for i in legacy_ids)
    import duckdb  # a store written before bases existed: its configs have no "base" key

    with duckdb.connect(str(db_path)) as con:
        con.execute("UPDATE runs SET config_json = json_remove(config_json, '$.base') WHERE run_id IN "
                    f"({', '.join('?' for _ in legacy_ids)})", list(legacy_ids))
        assert con.execute("SELECT count(*) FROM runs WHERE json_extract(config_json, '$.base') IS NOT NULL"
                           ).fetchone()[0] == 3
    assert store.load_probe_frame(db_path).equals(frame)
    slopes = fit_slopes(frame.filter(frame["site"] == "y"), n_boot=20)
    assert set(slopes["init_base"]) == {"mamba", LEGACY_BASE}
    per_base = slopes.filter(slopes["quantity"] == "value").group_by("init_base").len()
    assert per_base["len"].n_unique() == 1  # the same cells under each base, never one merged cell
    only = store.load_probe_frame(db_path, {"init_base": "mamba"})
    assert set(only["init_base"]) == {"mamba"} and only.height == frame.filter(frame["init_base"] == "mamba").height
