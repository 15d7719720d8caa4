"""Presets as data: declared init scales and learning rates reach the model and the optimizer."""

from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

from ssmscope.runs.cli.main import app
from ssmscope.ssm import ConfigError, MambaConfig, MambaLM, apply_preset, build_optimizer, load_preset, plan
from ssmscope.ssm.presets import builtin_names
from ssmscope.ssm.roles import STRUCTURAL_RULES, InitKind, Role


@pytest.mark.parametrize("preset", ["sp", "mup", "mup-ssm"])
@pytest.mark.parametrize("disc", ["zoh", "euler"])
@pytest.mark.parametrize("d_model", [128, 512])
@pytest.mark.parametrize("base", [None, "ssmscope-v0"])
def test_measured_init_std_matches_declared_value_within_ten_percent(preset, disc, d_model, base):
    cfg = MambaConfig(d_model=d_model, d_state=d_model // 2, discretization=disc, n_layers=1)
    model = MambaLM(cfg)
    p = load_preset(preset)
    apply_preset(model, cfg, p, "adam", 1e-3, seed=1, base=base)
    params = dict(model.named_parameters(remove_duplicate=False))
    for row in plan(model, cfg, p, "adam", 1e-3, base=base):
        value = params[row.name].detach().double()
        if row.init_kind in (InitKind.NORMAL, InitKind.UNIFORM):
            assert value.std().item() == pytest.approx(row.init_scale, rel=0.1), row.name
            assert abs(value.mean().item()) < 0.2 * row.init_scale + 1e-12, row.name
        elif row.init_kind == InitKind.TIED:
            assert params[row.name] is params[row.tied_to], row.name
        elif row.init_kind == InitKind.CONSTANT:
            assert torch.all(value == row.init_scale), row.name
        elif row.role == Role.A_LOG:
            n = value.shape[1]
            expected = torch.log(torch.arange(1, n + 1, dtype=torch.float64)).expand_as(value)
            assert torch.allclose(value, expected), row.name
        else:  # dt bias: softplus(bias) is log-uniform in [dt_min, dt_max]
            delta = torch.nn.functional.softplus(value)
            assert delta.min() >= cfg.dt_min * 0.999 and delta.max() <= cfg.dt_max * 1.001
            log_delta = torch.log(delta)
            mid = (math.log(cfg.dt_min) + math.log(cfg.dt_max)) / 2
            assert log_delta.mean().item() == pytest.approx(mid, abs=0.25)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("preset", ["sp", "mup-ssm"])
def test_optimizer_group_learning_rates_equal_the_table(optimizer, preset):
    cfg = MambaConfig(d_model=64, d_state=128, discretization="euler", n_layers=2)
    model = MambaLM(cfg)
    p = load_preset(preset)
    groups = apply_preset(model, cfg, p, optimizer, 0.01)
    opt = build_optimizer(groups, optimizer)
    u_ratio, x_ratio = cfg.d_inner / p.base_n_u, cfg.d_state / p.base_n_x
    family = "sgd" if optimizer == "sgd" else "adam"
    by_name = {g["name"]: g for g in opt.param_groups}
    assert len(by_name) == sum(1 for _ in model.parameters())
    for name, group in by_name.items():
        role = Role(group["role"])
        exp = p.scaling(role, cfg.discretization).lr[family]
        assert group["lr"] == pytest.approx(0.01 * u_ratio**exp.n_u * x_ratio**exp.n_x), name


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
    for name in builtin_names():
        for base in (None, "ssmscope-v0"):
            rows = plan(MambaLM(cfg), cfg, load_preset(name), "sgd", 0.1, base=base)
            assert all(r.role is not None for r in rows), name
            assert {r.role for r in rows} == set(Role), name


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
    for role in Role:
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


def test_param_show_prints_every_role_and_exits_zero():
    result = CliRunner().invoke(app, ["param", "show", "mup-ssm", "--d-model", "128", "--d-state", "64"])
    assert result.exit_code == 0, result.output
    for role in Role:
        assert str(role) in result.output
    assert "all 39 parameters covered" in result.output and "on base 'mamba'" in result.output
    assert "1 tied" in result.output
    for dist in ("uniform", "normal", "constant", "structural", "tied"):
        assert dist in result.output


def test_param_show_unknown_preset_is_one_line_exit_2():
    result = CliRunner().invoke(app, ["param", "show", "nope"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
