"""The exponent solver on Mamba-2: per-group update probes of Mamba2Observer, the solver's Mamba-2 groups, knobs and
objective, `param fit`'s family check, and preset rewriting that keeps a Mamba-2 preset's own keys."""

from __future__ import annotations

import copy
import tomllib
from fractions import Fraction as F

import numpy as np
import polars as pl
import pytest
import torch
from torch.func import functional_call
from typer.testing import CliRunner

from ssmscope.probes.mamba2 import Mamba2Observer
from ssmscope.probes.observer import UPDATE_GROUPS as S6_GROUPS
from ssmscope.probes.update_groups import UPDATE_GROUPS_BY_FAMILY, update_groups
from ssmscope.runs.analysis import preset_toml
from ssmscope.runs.analysis.objective import (
    DEFAULT_OBJECTIVE,
    MAMBA2_OBJECTIVE,
    default_objective,
    parse_objective,
)
from ssmscope.runs.analysis.solver import solve
from ssmscope.runs.analysis.synthetic import synthetic_frame
from ssmscope.runs.sweeps.spec import parse_spec
from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.mamba2 import Mamba2Config, Mamba2LM, init_mamba2
from ssmscope.ssm.presets import load_preset, parse_preset
from ssmscope.ssm.roles import ROLES_OF_FAMILY, Family, Role, role_of
from ssmscope.ssm.scan.ssd_probe import SSDStateProbe
from ssmscope.ssm.tomlfiles import read_builtin_or_file

M2_GROUPS = {g: tuple(r) for g, r in update_groups("mamba2").items()}


# --- the group tables ----------------------------------------------------------------------------------
def test_group_tables_are_data_per_family_and_s6s_is_unchanged():
    assert S6_GROUPS == {"W_B": ("x_proj_B",), "W_C": ("x_proj_C",),
                         "dt_path": ("x_proj_dt", "dt_proj_weight", "dt_proj_bias"), "A_log": ("A_log",),
                         "upstream": ("embedding", "norm", "in_proj", "conv_weight", "conv_bias")}
    assert M2_GROUPS == {"W_B": ("in_proj_B",), "W_C": ("in_proj_C",), "dt_path": ("in_proj_dt", "dt_bias"),
                         "A_log": ("A_log",), "upstream": ("embedding", "norm", "in_proj_z", "in_proj_x",
                                                           "conv_weight", "conv_bias")}
    for family, groups in UPDATE_GROUPS_BY_FAMILY.items():
        roles = [r for g in groups.values() for r in g]
        assert len(roles) == len(set(roles)) and set(roles) <= {r.value for r in ROLES_OF_FAMILY[family]}


# --- Mamba2Observer.group_update_records against brute force -------------------------------------------
def _naive_states(probe: SSDStateProbe) -> torch.Tensor:
    """Every h_t of one SSD call, (Bt, L, H, P, N), by the plain recurrence h_t = exp(Δ_t a)·h_{t−1} + Δ_t x_t B_tᵀ."""
    inp = probe.inputs
    x, delta, a = inp.x.double(), inp.delta.double(), inp.A.double()
    heads = x.shape[2]
    b = inp.B.double().repeat_interleave(heads // inp.B.shape[2], dim=2)
    h = torch.zeros(x.shape[0], heads, x.shape[3], b.shape[-1], dtype=torch.float64)
    out = []
    for t in range(x.shape[1]):
        decay = torch.exp(delta[:, t] * a)[..., None, None]
        h = decay * h + (delta[:, t, :, None, None] * x[:, t, :, :, None] * b[:, t, :, None, :])
        out.append(h)
    return torch.stack(out, 1)


def _direct(model: Mamba2LM, params: dict, ids: torch.Tensor) -> list[dict]:
    """Per layer: the SSD states, y, C·h and the block output of a functional_call with `params` (no observer)."""
    got: list[dict] = [{} for _ in model.mixers]
    handles = []
    for layer, mixer in enumerate(model.mixers):
        handles.append(mixer.ssm_output.register_forward_hook(
            lambda m, a, o, layer=layer: got[layer].__setitem__("y", o.detach().double())))
        handles.append(mixer.register_forward_hook(
            lambda m, a, o, layer=layer: got[layer].__setitem__("block_out", o.detach().double())))
        mixer.probe = SSDStateProbe()
    try:
        with torch.no_grad():
            functional_call(model, params, (ids,))
        for layer, mixer in enumerate(model.mixers):
            inp = mixer.probe.inputs
            got[layer]["h"] = _naive_states(mixer.probe)
            got[layer]["cx"] = got[layer]["y"] - (inp.x * inp.D[:, None]).flatten(-2).double()
    finally:
        for h in handles:
            h.remove()
        for mixer in model.mixers:
            mixer.probe = None
    return got


def test_mamba2_group_records_move_only_the_moved_group_and_match_a_direct_recompute():
    torch.manual_seed(0)
    model = init_mamba2(Mamba2LM(Mamba2Config(d_model=32, d_state=8, n_layers=2, vocab_size=64, headdim=16)), 0)
    ids = torch.randint(0, 64, (2, 9))
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    with Mamba2Observer(model) as obs:
        obs.arm(0)
        model(ids[:, :-1]).float().pow(2).mean().backward()
        obs.collect()
        with torch.no_grad():  # move in_proj_B only
            for name, p in model.named_parameters():
                if role_of(name) == Role.IN_PROJ_B:
                    p.add_(0.2 * torch.randn_like(p))
        records = obs.group_update_records(3, ids[:, :-1])
    frame = pl.DataFrame(records)
    assert set(frame["group"]) == set(M2_GROUPS) and set(frame["site"]) == {"x", "y", "cx", "block_out"}
    assert set(frame["quantity"]) == {"delta_init"} and set(frame["step"]) == {3}
    assert frame.height == len(M2_GROUPS) * 4 * 2
    others = frame.filter(pl.col("group") != "W_B")
    assert others["sumsq"].to_list() == [0.0] * others.height  # their roles did not change: the init recompute
    moved = frame.filter(pl.col("group") == "W_B")
    assert (moved["sumsq"] > 0).all()
    current = {n: p.detach() for n, p in model.named_parameters()}
    mixed = {n: current[n] if role_of(n) == Role.IN_PROJ_B else init[n] for n in current}
    before, after = _direct(model, init, ids[:, :-1]), _direct(model, mixed, ids[:, :-1])
    for layer in range(2):
        want = {"x": (after[layer]["h"] - before[layer]["h"]).pow(2).sum().item(),
                **{s: (after[layer][s] - before[layer][s]).pow(2).sum().item() for s in ("y", "cx", "block_out")}}
        rows = moved.filter(pl.col("layer") == layer)
        got = dict(rows.select("site", "sumsq").iter_rows())
        for site, value in want.items():
            assert got[site] == pytest.approx(value, rel=1e-4), (layer, site)


def test_a_mamba2_spec_may_ask_for_group_probes_and_the_family_has_them():
    from ssmscope.subjects import SsmscopeFamily

    grid = {"n_u": [32, 64], "n_x": [8], "presets": ["mamba2-sp"], "optimizers": ["adam"], "lrs": [0.01], "seeds": [0]}
    spec = parse_spec({"sweep": {"name": "m2g"}, "grid": grid,
                       "train": {"model": "mamba2", "group_probes": True}}, "m2g.toml")
    assert all(c.group_probes and c.model == "mamba2" for c in spec.runs)
    assert SsmscopeFamily(Mamba2Config(d_model=32, d_state=8, n_layers=1, vocab_size=64)).group_probes


# --- the solver on Mamba-2 ---------------------------------------------------------------------------------
def m2_raw(name: str = "mamba2-mup-ssm") -> dict:
    return read_builtin_or_file("ssmscope.ssm", "presets", "preset", name)[0]


AMPLITUDE = {"W_B": 0.3, "W_C": 0.3, "dt_path": 0.2, "A_log": 0.15, "upstream": 0.5}


class World2:
    """tests/test_solver.py's synthetic world on Mamba-2's roles: x ∝ c_B (in_proj_B), C·h ∝ c_C·c_B, each group's
    contribution to Δx, Δy, Δ(C·h) ∝ its Adam lr; a 2-D grid N_u 32..128 × N_x 16..64, SSD's one discretisation."""

    def __init__(self, alpha: dict, base: dict):
        self.alpha, self.base, self.calls = alpha, base, []

    def change(self, raw: dict, role: str, kind: str) -> np.ndarray:
        new, old = (preset_toml.exponents(r, role, "euler", kind) for r in (raw, self.base))
        return np.array([float(new[0] - old[0]), float(new[1] - old[1])])

    def __call__(self, raw: dict, k: int) -> pl.DataFrame:
        self.calls.append(raw)
        cells = (("x", "value"), ("y", "value"), ("cx", "value"), ("x", "delta_init"), ("y", "delta_init"),
                 ("cx", "delta_init"))
        frame = synthetic_frame(n_u=(32, 64, 128), n_x=(16, 32, 64), presets=("solve",), discretizations=("euler",),
                                steps=(0, 4), layers=2, cells=cells, groups=("", *M2_GROUPS), noise=0.0, rng_seed=k)
        frame = frame.filter((pl.col("group") == "") | (pl.col("quantity") == "delta_init") & (pl.col("step") == 4))
        logw = np.log2(frame.select("n_u", "n_x").to_numpy() / np.array([32.0, 16.0]))
        d_b, d_c = self.change(raw, "in_proj_B", "init"), self.change(raw, "in_proj_C", "init")
        zero = np.zeros(2)
        rms = np.empty(frame.height)
        rows = frame.select("site", "quantity", "group", "step").iter_rows()
        for i, (site, quantity, group, step) in enumerate(rows):
            if quantity == "value":
                slope = {"x": np.asarray(self.alpha.get("x", zero)) + d_b, "cx": d_b + d_c, "y": zero}[site]
                rms[i] = 2.0 ** float(slope @ logw[i])
            elif step == 0:
                rms[i] = 0.0
            else:
                parts = [self._part(raw, g, site, logw[i]) for g in M2_GROUPS]
                rms[i] = self._part(raw, group, site, logw[i]) if group else float(np.sqrt(sum(p * p for p in parts)))
        return frame.with_columns((pl.Series(rms) ** 2 * pl.col("count")).alias("sumsq"),
                                  (pl.Series(rms) * pl.col("n_channels")).alias("channel_norm_sum"))

    def _part(self, raw: dict, group: str, site: str, logw: np.ndarray) -> float:
        if group == "W_C" and site == "x":
            return 0.0
        slope = np.asarray(self.alpha.get(group, (0.0, 0.0))) + self.change(raw, M2_GROUPS[group][0], "lr.adam")
        return AMPLITUDE[group] * 2.0 ** float(slope @ logw)


def test_the_solver_moves_mamba2_roles_on_a_2d_grid():
    base = m2_raw()
    world = World2({"x": (0.25, 0.0), "W_C": (0.0, -0.5), "dt_path": (0.5, 0.0)}, base)
    result = solve(base, world, MAMBA2_OBJECTIVE, group_roles=M2_GROUPS, family="adam", design="2d", n_boot=200)
    assert result.converged and result.chosen == 1, result.reason

    def moved(role: str, kind: str) -> tuple:
        after, before = (preset_toml.exponents(r, role, "euler", kind) for r in (result.raw, base))
        return after[0] - before[0], after[1] - before[1]

    want = {("in_proj_B", "init"): (F(-1, 4), 0), ("in_proj_C", "init"): (F(1, 4), 0),  # C·h ∝ c_C·c_B
            ("in_proj_C", "lr.adam"): (0, F(1, 2)), ("in_proj_dt", "lr.adam"): (F(-1, 2), 0),
            ("dt_bias", "lr.adam"): (F(-1, 2), 0)}
    for role in (r.value for r in ROLES_OF_FAMILY[Family.MAMBA2]):
        for kind in ("init", "lr.adam", "lr.sgd"):
            assert moved(role, kind) == want.get((role, kind), (0, 0)), (role, kind)
    solved = parse_preset(tomllib.loads(preset_toml.render(result.raw, [])), "solved")
    assert solved.family == Family.MAMBA2


def test_mamba2_objective_knobs_are_its_roles():
    assert default_objective("mamba") is DEFAULT_OBJECTIVE and default_objective("mamba2") is MAMBA2_OBJECTIVE
    assert [k.role for k in MAMBA2_OBJECTIVE.init_knobs] == ["in_proj_B", "in_proj_C"]
    assert {t.site for t in MAMBA2_OBJECTIVE.targets} == {"x", "y", "cx"} and "cx" in MAMBA2_OBJECTIVE.update_sites
    goal = parse_objective({"objective": {"tolerance": 0.1}}, "g.toml", "mamba2")
    assert goal.init_knobs == MAMBA2_OBJECTIVE.init_knobs and goal.tolerance == 0.1
    with pytest.raises(ConfigError) as err:
        parse_objective({"objective": {"init_knobs": [{"role": "x_proj_B", "site": "x"}]}}, "g.toml", "mamba2")
    assert "is not a mamba2 role" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="is not a mamba role"):
        parse_objective({"objective": {"init_knobs": [{"role": "in_proj_B", "site": "x"}]}}, "g.toml")


@pytest.mark.parametrize(("base", "spec", "message"), [
    ("mamba2-mup-ssm", "paper-figure", "is a mamba2 preset but spec paper-figure sweeps mamba"),
    ("mup-ssm", "mamba2-table", "is a mamba preset but spec mamba2-table sweeps mamba2"),
])
def test_param_fit_refuses_a_family_mismatch_in_one_line(tmp_path, base, spec, message):
    from ssmscope.runs.cli.main import app

    result = CliRunner().invoke(app, ["param", "fit", base, "--spec", spec, "--out", str(tmp_path / "o.toml")])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1


# --- rewriting a Mamba-2 preset -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mamba2-falconh1", "mamba2-archscale", "mamba2-mup-ssm"])
def test_rewriting_a_mamba2_preset_keeps_family_decay_and_mult_base(name):
    raw = m2_raw(name)
    before = load_preset(name)
    role = "in_proj_B"
    old = preset_toml.exponents(raw, role, "euler", "lr.adam")
    new = preset_toml.with_exponents(raw, {(role, "euler", "lr.adam"): (old[0], old[1] + F(1, 4))})
    text = preset_toml.render(new, ["rewritten"])
    solved = parse_preset(tomllib.loads(text), "rewritten")
    assert solved.family == Family.MAMBA2 and 'family = "mamba2"' in text
    for disc in before.rules:
        for r, rule in before.rules[disc].items():
            got = solved.rules[disc][r]
            assert (got.decay, got.mult_base, got.mult) == (rule.decay, rule.mult_base, rule.mult), (disc, r)
            if r.value != role:
                assert got == rule, (disc, r)
    assert solved.scaling(Role.IN_PROJ_B, "euler").lr["adam"].pair == (old[0], old[1] + F(1, 4))
    untouched = copy.deepcopy(raw["roles"][role])
    untouched.pop("init", None)
    untouched.pop("lr", None)
    kept = {k: v for k, v in new["roles"][role].items() if k not in ("init", "lr")}
    assert kept == untouched  # decay / mult_base / mult of the rewritten role itself
