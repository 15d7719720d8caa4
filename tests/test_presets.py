"""Presets as data: declared init scales and learning rates reach the model and the optimizer."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from typer.testing import CliRunner

from ssmscope.runs.analysis import equivalence
from ssmscope.runs.analysis.slopes import OPTIMIZER_FAMILY
from ssmscope.runs.cli.main import app
from ssmscope.ssm import ConfigError, MambaConfig, MambaLM, apply_preset, build_optimizer, load_preset, plan
from ssmscope.ssm.config import FAMILY_OF_OPTIMIZER, Optimizer, OptimizerFamily
from ssmscope.ssm.exponents import Exponents
from ssmscope.ssm.presets import builtin_names
from ssmscope.ssm.roles import ROLES_OF_FAMILY, STRUCTURAL_RULES, Family, InitKind, Role, role_of
from ssmscope.ssm.tomlfiles import parse_fraction, parse_number

# --- init std and learning rates, derived by hand from the TOML tables -------------------------------------
# The model: d_model = 128, d_state = 64, 3 layers, expand 2 → N_u = 256, N_x = 64, R = ⌈128/16⌉ = 8, d_conv = 4.
# Every built-in preset has its base width at N_u0 = N_x0 = 32 (d_model0 = 16, R0 = 1), so the width ratios
# are N_u/N_u0 = 8 and N_x/N_x0 = 2. A uniform role of bound b has std b/√3.
WIDE = dict(d_model=128, d_state=64, n_layers=3)

# sp on `mamba`: a uniform role U(±fan_in0^-1/2) at the base width, times 8^-1/2 (init {n_u = "-1/2"}), is
# Mamba's kaiming-uniform at the real width: std (3·fan_in)^-1/2.
SP_MAMBA: dict[Role, tuple[InitKind, float]] = {
    Role.EMBEDDING: (InitKind.NORMAL, 0.02),  # std = 0.02, init {}
    Role.IN_PROJ: (InitKind.UNIFORM, 0.051031036307982884),  # (3·16)^-1/2 · 8^-1/2 = (3·128)^-1/2
    Role.CONV_WEIGHT: (InitKind.UNIFORM, 0.2886751345948129),  # (3·4)^-1/2, no width scaling
    Role.CONV_BIAS: (InitKind.UNIFORM, 0.2886751345948129),
    Role.X_PROJ_DT: (InitKind.UNIFORM, 0.036084391824351615),  # (3·32)^-1/2 · 8^-1/2 = (3·256)^-1/2
    Role.X_PROJ_B: (InitKind.UNIFORM, 0.036084391824351615),
    Role.X_PROJ_C: (InitKind.UNIFORM, 0.036084391824351615),
    Role.DT_PROJ_WEIGHT: (InitKind.UNIFORM, 0.20412414523193154),  # (3·1)^-1/2 · 8^-1/2 = (3·8)^-1/2
    Role.OUT_PROJ: (InitKind.UNIFORM, 0.020833333333333332),  # (3·32·3 layers)^-1/2 · 8^-1/2 = 1/48
    Role.D: (InitKind.CONSTANT, 1.0),
    Role.NORM: (InitKind.CONSTANT, 1.0),
}
# mup-ssm under Euler: W_C's init {n_u = "-1/2", n_x = "-1/2"}: (3·256)^-1/2 · 2^-1/2 = (3·512)^-1/2.
MUP_SSM_EULER = SP_MAMBA | {Role.X_PROJ_C: (InitKind.UNIFORM, 0.025515518153991442)}
# mup: W_B and W_C init {n_u = -1, n_x = "1/2"}: (3·32)^-1/2 · 8^-1 · 2^1/2.
MUP = SP_MAMBA | {Role.X_PROJ_B: (InitKind.UNIFORM, 0.018042195912175808),
                  Role.X_PROJ_C: (InitKind.UNIFORM, 0.018042195912175808)}
# sp on `ssmscope-v0`: N(0, fan_in0^-1) times 8^-1/2; no depth factor on out_proj; N(0, 1) embedding; an untied
# readout N(0, 1/16) · 8^-1/2.
SP_V0: dict[Role, tuple[InitKind, float]] = {
    Role.EMBEDDING: (InitKind.NORMAL, 1.0),
    Role.IN_PROJ: (InitKind.NORMAL, 0.08838834764831843),  # 16^-1/2 · 8^-1/2 = 128^-1/2
    Role.CONV_WEIGHT: (InitKind.NORMAL, 0.5),  # 4^-1/2
    Role.CONV_BIAS: (InitKind.NORMAL, 0.5),
    Role.X_PROJ_DT: (InitKind.NORMAL, 0.0625),  # 32^-1/2 · 8^-1/2 = 1/16
    Role.X_PROJ_B: (InitKind.NORMAL, 0.0625),
    Role.X_PROJ_C: (InitKind.NORMAL, 0.0625),
    Role.DT_PROJ_WEIGHT: (InitKind.NORMAL, 0.35355339059327373),  # 1 · 8^-1/2
    Role.OUT_PROJ: (InitKind.NORMAL, 0.0625),  # 32^-1/2 · 8^-1/2
    Role.D: (InitKind.CONSTANT, 1.0),
    Role.NORM: (InitKind.CONSTANT, 1.0),
    Role.READOUT: (InitKind.NORMAL, 0.08838834764831843),  # 16^-1/2 · 8^-1/2
}
INIT_CASES = [("sp", "zoh", None, SP_MAMBA), ("sp", "euler", None, SP_MAMBA), ("mup-ssm", "zoh", None, SP_MAMBA),
              ("mup-ssm", "euler", None, MUP_SSM_EULER), ("mup", "euler", None, MUP),
              ("sp", "zoh", "ssmscope-v0", SP_V0)]


@pytest.mark.parametrize(("preset", "disc", "base", "expected"), INIT_CASES)
def test_planned_init_std_is_the_value_derived_from_the_tables(preset, disc, base, expected):
    cfg = MambaConfig(**WIDE, discretization=disc)
    rows = plan(MambaLM(cfg), cfg, load_preset(preset), "adam", 1e-3, base=base)
    assert len(rows) == 39
    for row in rows:
        if row.role in STRUCTURAL_RULES:
            assert (row.init_kind, row.init_scale) == (InitKind.STRUCTURAL, None), row.name
        elif row.role == Role.READOUT and base is None:  # Mamba ties the readout to the embedding
            assert (row.init_kind, row.init_scale, row.tied_to) == (InitKind.TIED, None, "embedding.weight")
        else:
            kind, std = expected[row.role]
            assert row.init_kind == kind, row.name
            assert row.init_scale == pytest.approx(std, rel=1e-12), row.name


@pytest.mark.parametrize(("preset", "disc", "base", "expected"), INIT_CASES)
def test_drawn_init_has_the_std_derived_from_the_tables(preset, disc, base, expected):
    cfg = MambaConfig(**WIDE, discretization=disc)
    model = MambaLM(cfg)
    apply_preset(model, cfg, load_preset(preset), "adam", 1e-3, seed=1, base=base)
    params = dict(model.named_parameters(remove_duplicate=False))
    by_role: dict[Role, list[torch.Tensor]] = {}
    for name, p in params.items():
        by_role.setdefault(role_of(name), []).append(p.detach().double().flatten())
    assert (params["lm_head.weight"] is params["embedding.weight"]) == (base is None)
    for role, (kind, std) in expected.items():
        value = torch.cat(by_role[role])  # every layer's draws of the role together
        if kind == InitKind.CONSTANT:
            assert torch.all(value == std), role
        else:
            assert value.std().item() == pytest.approx(std, rel=0.1), role
            assert abs(value.mean().item()) < 0.2 * std, role
            if kind == InitKind.UNIFORM:  # U(±√3·std): the bound is reached, never passed
                assert value.abs().max().item() <= math.sqrt(3) * std * (1 + 1e-12), role
    a_log = params["layers.0.mixer.A_log"].detach()  # S4D-real: A_log[i, n] = log(n + 1), in float64, then cast
    assert torch.equal(a_log, torch.log(torch.arange(1, 65, dtype=torch.float64)).float().expand(256, 64))
    delta = torch.nn.functional.softplus(params["layers.0.mixer.dt_proj.bias"].detach().double())
    assert delta.min() >= 1e-3 * 0.999 and delta.max() <= 0.1 * 1.001  # Δ log-uniform in [dt_min, dt_max]
    assert torch.log(delta).mean().item() == pytest.approx((math.log(1e-3) + math.log(0.1)) / 2, abs=0.25)


# mup-ssm at N_u = 256, N_x = 64 with base lr 0.01: lr · 8^a · 2^b, a and b from the table (adamw reads adam).
MUP_SSM_LR: dict[tuple[str, str], dict[Role, float]] = {}
for _disc in ("zoh", "euler"):
    _sgd = {Role.EMBEDDING: 0.08, Role.IN_PROJ: 0.01, Role.CONV_WEIGHT: 0.08, Role.CONV_BIAS: 0.08,
            Role.X_PROJ_DT: 0.01, Role.X_PROJ_B: 0.00125, Role.X_PROJ_C: 0.00125, Role.DT_PROJ_WEIGHT: 0.01,
            Role.DT_PROJ_BIAS: 0.08, Role.A_LOG: 0.08, Role.D: 0.08, Role.OUT_PROJ: 0.01, Role.NORM: 0.08}
    _adam = {Role.EMBEDDING: 0.01, Role.IN_PROJ: 0.00125, Role.CONV_WEIGHT: 0.01, Role.CONV_BIAS: 0.01,
             Role.X_PROJ_DT: 0.00125, Role.X_PROJ_B: 0.00125, Role.X_PROJ_C: 0.00125, Role.DT_PROJ_WEIGHT: 0.00125,
             Role.DT_PROJ_BIAS: 0.01, Role.A_LOG: 0.01, Role.D: 0.01, Role.OUT_PROJ: 0.00125, Role.NORM: 0.01}
    if _disc == "euler":
        _sgd |= {Role.X_PROJ_C: 0.000625,  # {n_u = -1, n_x = -1}: 0.01 / 8 / 2
                 Role.A_LOG: 0.11313708498984762}  # {n_u = 1, n_x = "1/2"}: 0.01 · 8 · √2
        _adam |= {Role.X_PROJ_B: 0.0008838834764831843,  # {n_u = -1, n_x = "-1/2"}: 0.01 / 8 / √2
                  Role.X_PROJ_C: 0.000625}
    MUP_SSM_LR |= {(_disc, "sgd"): _sgd, (_disc, "adam"): _adam, (_disc, "adamw"): _adam}


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("disc", ["zoh", "euler"])
def test_optimizer_group_learning_rates_are_the_values_derived_from_the_table(optimizer, disc):
    cfg = MambaConfig(**WIDE, discretization=disc)
    model = MambaLM(cfg)
    opt = build_optimizer(apply_preset(model, cfg, load_preset("mup-ssm"), optimizer, 0.01), optimizer)
    assert type(opt).__name__ == {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}[optimizer]
    assert len(opt.param_groups) == 38  # one per parameter; the tied readout is the embedding's
    expected = MUP_SSM_LR[(disc, optimizer)]
    for group in opt.param_groups:
        assert group["lr"] == pytest.approx(expected[Role(group["role"])], rel=1e-12), group["name"]


def test_sp_gives_every_group_the_base_learning_rate():
    cfg = MambaConfig(**WIDE, discretization="euler")
    for optimizer in ("sgd", "adam"):
        groups = apply_preset(MambaLM(cfg), cfg, load_preset("sp"), optimizer, 0.01)
        assert {g["lr"] for g in groups} == {0.01}


@pytest.mark.parametrize(("preset", "readout"), [("sp", 1.0), ("mup", 0.125), ("mup-ssm", 0.125)])
def test_forward_multipliers_are_the_values_derived_from_the_table(preset, readout):
    """Only the tied readout has a multiplier: [roles.readout.tied] mult = {n_u = -1} is 8^-1 at N_u = 256
    (sp: mult = {}); every other module keeps 1."""
    cfg = MambaConfig(**WIDE)
    model = MambaLM(cfg)
    apply_preset(model, cfg, load_preset(preset), "adam", 1e-3)
    mults = {name: m.multiplier for name, m in model.named_modules() if hasattr(m, "multiplier")}
    assert len(mults) == 2 + 3 * 6  # embedding, lm_head; per layer in_proj, x_proj.{dt,B,C}, dt_proj, out_proj
    assert mults.pop("lm_head") == readout
    assert set(mults.values()) == {1.0}


@pytest.mark.parametrize("base", [None, "mamba", "hf", "ssmscope-v0"])
@pytest.mark.parametrize("disc", ["zoh", "euler"])
def test_presets_coincide_at_the_base_width(base, disc):
    cfg = MambaConfig(d_model=16, d_state=32, discretization=disc)  # N_u0 = N_x0 = 32
    rows = {}
    for name in ("sp", "mup", "mup-ssm"):
        rows[name] = [(r.name, r.init_kind, r.init_scale, r.lr, r.multiplier)
                      for r in plan(MambaLM(cfg), cfg, load_preset(name), "adam", 3e-3, base=base)]
    assert rows["sp"] == rows["mup"] == rows["mup-ssm"]


def test_mup_ssm_scales_W_C_init_with_state_size_only_under_euler():
    p = load_preset("mup-ssm")
    assert p.scaling(Role.X_PROJ_C, "euler").init.n_x == -0.5
    assert p.scaling(Role.X_PROJ_C, "zoh").init.n_x == 0.0
    assert p.scaling(Role.X_PROJ_C, "zoh").init.n_u == -0.5


def test_every_builtin_preset_covers_every_parameter():
    cfg = MambaConfig(d_model=32, d_state=16)
    names = builtin_names(Family.MAMBA)
    assert {"sp", "mup", "mup-ssm"} <= set(names) and "mamba2-sp" not in names
    for name in names:
        for base in (None, "ssmscope-v0"):
            rows = plan(MambaLM(cfg), cfg, load_preset(name), "sgd", 0.1, base=base)
            assert all(r.role is not None for r in rows), name
            assert {r.role for r in rows} == set(ROLES_OF_FAMILY[Family.MAMBA]), name


def test_a_tiny_model_learns_on_cpu():
    torch.manual_seed(0)
    cfg = MambaConfig(d_model=16, d_state=8, n_layers=2, vocab_size=32)
    model = MambaLM(cfg)
    opt = build_optimizer(apply_preset(model, cfg, load_preset("mup-ssm"), "adam", 1e-2), "adam")
    ids = torch.randint(0, 32, (4, 33), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(30):
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 32), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


GOOD = """
[preset]
name = "custom"
base_n_u = 64
base_n_x = 16
{roles}
"""


def _roles_toml(skip: str | None = None, extra: str = "") -> str:
    lines = []
    for role in ROLES_OF_FAMILY[Family.MAMBA]:
        if role.value == skip:
            continue
        init = "{}" if role in STRUCTURAL_RULES else "{n_u = '-1/2'}"
        lines.append(f"[roles.{role.value}]\ninit = {init}\nlr = {{sgd = {{}}, adam = {{n_u = -1}}}}\n")
    return "\n".join(lines) + extra


def test_user_preset_file_loads(tmp_path):
    path = tmp_path / "custom.toml"
    path.write_text(GOOD.format(roles=_roles_toml()))
    p = load_preset(path)
    assert p.name == "custom" and p.base_n_u == 64
    assert p.scaling(Role.IN_PROJ, "zoh").init.n_u == -0.5


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: t + "\n[roles.bogus]\ninit = {}\nlr = {sgd = {}, adam = {}}\n", "bogus: unknown role"),
        (lambda t: t.replace("[roles.D]\ninit = {n_u = '-1/2'}\nlr = {sgd = {}, adam = {n_u = -1}}",
                             "[roles.D]\ninit = {}\nlr = {sgd = {}}"), "missing optimizer 'adam'"),
        (lambda t: t.replace("init = {n_u = '-1/2'}", "init = {n_u = 'half'}", 1), "allowed: a number"),
        (lambda t: t.replace("[roles.A_log]\ninit = {}", "[roles.A_log]\ninit = {n_x = 1}"), "structural"),
        (lambda t: t.replace("init = {n_u = '-1/2'}", "init = {n_y = 1}", 1), "allowed: n_u, n_x"),
        (lambda t: t + "\n[roles.norm.zoh]\nmult = {n_u = 1}\n", "no linear map"),
    ],
)
def test_bad_preset_files_give_clear_errors(tmp_path, mutate, message):
    path = tmp_path / "bad.toml"
    path.write_text(mutate(GOOD.format(roles=_roles_toml())))
    with pytest.raises(ConfigError, match=message):
        load_preset(path)


def test_preset_missing_a_role_names_it(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(GOOD.format(roles=_roles_toml(skip="x_proj_C")))
    with pytest.raises(ConfigError, match=r"roles\.x_proj_C: missing"):
        load_preset(path)


# `param show mup-ssm` at d_model 128, d_state 64, Euler, Adam, lr 0.01: per role (shape, dist, init std/value, lr,
# lr ∝, mult) as the table prints them (4 significant digits), each worked out by hand above (MUP_SSM_EULER,
# MUP_SSM_LR): e.g. W_B's lr 0.01 / 8 / √2 = 0.0008839, W_C's init (3·512)^-1/2 = 0.02552, the readout's 1/8.
PARAM_SHOW_ROWS = {
    "embedding": ("[256, 128]", "normal", "0.02", "0.01", "1", "1"),
    "norm": ("[128]", "constant", "1", "0.01", "1", "—"),
    "A_log": ("[256, 64]", "structural", "—", "0.01", "1", "—"),
    "D": ("[256]", "constant", "1", "0.01", "1", "—"),
    "in_proj": ("[512, 128]", "uniform", "0.05103", "0.00125", "N_u^-1", "1"),
    "conv_weight": ("[256, 1, 4]", "uniform", "0.2887", "0.01", "1", "—"),
    "conv_bias": ("[256]", "uniform", "0.2887", "0.01", "1", "—"),
    "x_proj_dt": ("[8, 256]", "uniform", "0.03608", "0.00125", "N_u^-1", "1"),
    "x_proj_B": ("[64, 256]", "uniform", "0.03608", "0.0008839", "N_u^-1·N_x^-1/2", "1"),
    "x_proj_C": ("[64, 256]", "uniform", "0.02552", "0.000625", "N_u^-1·N_x^-1", "1"),
    "dt_proj_weight": ("[256, 8]", "uniform", "0.2041", "0.00125", "N_u^-1", "1"),
    "dt_proj_bias": ("[256]", "structural", "—", "0.01", "1", "—"),
    "out_proj": ("[128, 256]", "uniform", "0.02083", "0.00125", "N_u^-1", "1"),
    "readout": ("[256, 128]", "tied", "—", "(embedding's)", "—", "0.125"),
}


def test_param_show_prints_every_role_with_the_values_derived_from_the_table():
    result = CliRunner().invoke(app, ["param", "show", "mup-ssm", "--d-model", "128", "--d-state", "64",
                                      "--discretization", "euler", "--optimizer", "adam", "--lr", "0.01"])
    assert result.exit_code == 0, result.output
    assert "N_u=256, N_x=64, d_model=128, R=8, 3 layers, euler, adam, base lr 0.01" in result.output
    rows: dict[str, list[tuple[str, ...]]] = {}
    for line in result.output.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 10 and cells[1]:  # a table row (a wrapped cell's second line has no role)
            _, role, shape, dist, scale, _, _, lr, lr_exp, mult = cells
            rows.setdefault(role, []).append((shape, dist, scale, lr, lr_exp, mult))
    assert {role: set(found) for role, found in rows.items()} == {
        role: {cells} for role, cells in PARAM_SHOW_ROWS.items()}
    assert len(rows["norm"]) == 2 and all(len(found) == 1 for role, found in rows.items() if role != "norm")
    assert result.output.rstrip().endswith("all 39 parameters covered by preset 'mup-ssm' (mup-ssm) on base "
                                           "'mamba' (mamba); 1 tied (one tensor, two uses)")


def test_param_show_unknown_preset_is_one_line_exit_2():
    result = CliRunner().invoke(app, ["param", "show", "nope"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("value", "fraction", "number"), [
    ("-1/2", Fraction(-1, 2), -0.5), (" 1/3 ", Fraction(1, 3), 1 / 3), (-1, Fraction(-1), -1.0),
    (0.25, Fraction(1, 4), 0.25), (0.1, Fraction(1, 10), 0.1), (-0.333, Fraction(-333, 1000), -0.333),
    (0.1234567, Fraction(0.1234567), 0.1234567),  # no simple fraction is that double: its exact value
])
def test_one_reader_gives_exponents_as_exact_fractions_and_the_files_numbers(value, fraction, number):
    assert parse_fraction("p.n_u", value, 8) == fraction
    assert parse_number("p.n_u", value, 8) == number  # bit for bit: the model's factors do not change
    assert Exponents(n_u=fraction).factor(8.0, 1.0) == 8.0**number


@pytest.mark.parametrize(("value", "message"), [
    ("half", "allowed: a number such as"), ("nan", "allowed: a number such as"), ("1e400", "allowed: a number"),
    (float("nan"), "allowed: a finite number"), (10**400, "allowed: a finite number from -8 to 8"),
    (9, "allowed: a finite number from -8 to 8"), (True, "allowed: a number such as"),
])
def test_the_reader_refuses_what_is_not_a_finite_exponent(value, message):
    with pytest.raises(ConfigError, match=message):
        parse_fraction("p.n_u", value, 8)


def test_exponents_read_as_written_and_print_as_fractions():
    p = load_preset("mup-ssm")
    c = p.scaling(Role.X_PROJ_C, "euler")
    assert c.init == Exponents(Fraction(-1, 2), Fraction(-1, 2)) == Exponents(-0.5, -0.5)
    assert str(c.init) == "N_u^-1/2·N_x^-1/2" and str(c.lr[OptimizerFamily.ADAM]) == "N_u^-1·N_x^-1"
    assert str(Exponents()) == "1" and (c.init - c.init) == Exponents()


def test_one_optimizer_to_family_map():
    assert FAMILY_OF_OPTIMIZER == {"sgd": "sgd", "adam": "adam", "adamw": "adam"}
    assert [Optimizer(o).family for o in ("sgd", "adam", "adamw")] == [OptimizerFamily.SGD, OptimizerFamily.ADAM,
                                                                      OptimizerFamily.ADAM]
    assert OPTIMIZER_FAMILY is FAMILY_OF_OPTIMIZER and equivalence.FAMILY_OF_OPTIMIZER is FAMILY_OF_OPTIMIZER
