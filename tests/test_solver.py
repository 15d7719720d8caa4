"""The exponent solver: objectives, preset rewriting, group attribution, the solve loop, `ssmscope param fit`.

The solve loop is tested against a synthetic world whose slopes are known linear functions of the preset's
exponents (each group's contribution ∝ its learning rate, x ∝ c_B, C·x ∝ c_C·c_B): the solver must find the
exponents that flatten it, leave a flat preset alone, and refuse what it cannot use in one line.
"""

from __future__ import annotations

import tomllib
from fractions import Fraction as F
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from ssmscope.probes.observer import UPDATE_GROUPS
from ssmscope.runs.analysis import preset_toml
from ssmscope.runs.analysis.groups import NO_GROUP_PROBES, contributions, group_slopes
from ssmscope.runs.analysis.objective import DEFAULT_OBJECTIVE, Objective, load_objective, parse_objective
from ssmscope.runs.analysis.solver import propose, round_to_grid, solve, target_slopes
from ssmscope.runs.analysis.synthetic import synthetic_frame
from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.presets import load_preset, parse_preset
from ssmscope.ssm.roles import ROLES_OF_FAMILY, Family, Role
from ssmscope.ssm.tomlfiles import read_builtin_or_file

GROUP_ROLES = {g: tuple(r) for g, r in UPDATE_GROUPS.items()}
AMPLITUDE = {"W_B": 0.3, "W_C": 0.3, "dt_path": 0.2, "A_log": 0.15, "upstream": 0.5}
"""‖Δq_g‖ at the base width in the world (q_0 = 1: every run in linear response)."""


def base_raw(name: str = "mup-ssm") -> dict:
    return read_builtin_or_file("ssmscope.ssm", "presets", "preset", name)[0]


class World:
    """Probe frames whose slopes follow `alpha` plus the preset's exponent changes.

    alpha[disc] = {"x": a, "cx": a, group: a}: the exponents under the base preset, a = (a_u, a_x) of N_u and
    N_x, or one number for the joint width (then (0, a): on N_u = N_x only the sum is seen). A role's change
    of exponents adds to what it drives: x_proj_B's init to x and C·x, x_proj_C's init to C·x, a group's lr
    to its contributions to Δx and Δy. Totals are the root sum of squares of the contributions (orthogonal
    updates); W_C does not move x. Joint widths 32…256, or the grid `n_x` × those N_u.
    """

    def __init__(self, alpha: dict[str, dict], base: dict, *, noise: float = 0.01, groups: bool = True,
                 n_x: tuple[int, ...] | None = None):
        self.alpha = {d: {k: v if isinstance(v, tuple) else (0.0, v) for k, v in a.items()} for d, a in alpha.items()}
        self.base, self.noise, self.groups, self.n_x = base, noise, groups, n_x
        self.calls: list[dict] = []

    def change(self, raw: dict, role: str, disc: str, kind: str) -> np.ndarray:
        new, old = preset_toml.exponents(raw, role, disc, kind), preset_toml.exponents(self.base, role, disc, kind)
        return np.array([float(new[0] - old[0]), float(new[1] - old[1])])

    def __call__(self, raw: dict, k: int) -> pl.DataFrame:
        self.calls.append(raw)
        cells = (("x", "value"), ("y", "value"), ("cx", "value"), ("x", "delta_init"), ("y", "delta_init"))
        groups = ("", *UPDATE_GROUPS) if self.groups else ("",)
        n_u = (32, 64, 128) if self.n_x else (32, 64, 128, 256)
        frame = synthetic_frame(n_u=n_u, n_x=self.n_x, presets=("solve",), discretizations=tuple(self.alpha),
                                steps=(0, 4), layers=2, cells=cells, groups=groups, noise=0.0, rng_seed=k)
        frame = frame.filter((pl.col("group") == "") | (pl.col("quantity") == "delta_init") & (pl.col("step") == 4))
        rng = np.random.default_rng(k)
        logw = np.log2(frame.select("n_u", "n_x").to_numpy() / 32.0)
        rms = np.empty(frame.height)
        for i, (disc, site, quantity, group, step) in enumerate(
                frame.select("discretization", "site", "quantity", "group", "step").iter_rows()):
            a, d_b, d_c = self.alpha[disc], self.change(raw, "x_proj_B", disc, "init"), self.change(
                raw, "x_proj_C", disc, "init")
            if quantity == "value":
                zero = np.zeros(2)
                slope = {"x": a.get("x", zero) + d_b, "cx": a.get("cx", zero) + d_b + d_c, "y": zero}[site]
                rms[i] = 2.0 ** float(slope @ logw[i])
            elif step == 0:
                rms[i] = 0.0
            else:
                parts = [self._contribution(raw, disc, g, site, logw[i]) for g in UPDATE_GROUPS]
                rms[i] = (self._contribution(raw, disc, group, site, logw[i]) if group
                          else float(np.sqrt(sum(p * p for p in parts))))
        rms *= np.exp2(rng.normal(0.0, self.noise, frame.height))
        return frame.with_columns((pl.Series(rms) ** 2 * pl.col("count")).alias("sumsq"),
                                  (pl.Series(rms) * pl.col("n_channels")).alias("channel_norm_sum"))

    def _contribution(self, raw: dict, disc: str, group: str, site: str, logw: np.ndarray) -> float:
        if group == "W_C" and site == "x":
            return 0.0
        slope = np.asarray(self.alpha[disc].get(group, (0.0, 0.0))) + self.change(raw, GROUP_ROLES[group][0], disc,
                                                                                   "lr.adam")
        return AMPLITUDE[group] * 2.0 ** float(slope @ logw)


# --- objective ---------------------------------------------------------------------------------------
def test_default_objective_is_the_issues_validation_and_prints_itself():
    goal = DEFAULT_OBJECTIVE
    assert [t.label() for t in goal.targets] == ["‖x‖ @ step last", "‖y‖ @ step last", "‖Δx‖ @ step last",
                                                 "‖Δy‖ @ step last"]
    assert goal.convention("x", "zoh") == "channel_l2" and goal.convention("x", "euler") == "rms"
    assert goal.tolerance == 0.15 and goal.grid == F(1, 4)
    text = "\n".join(goal.lines())
    assert "x.zoh channel_l2" in text and "multiples of 1/4" in text and "x_proj_C ← cx @ step 0" in text


@pytest.mark.parametrize(("table", "message"), [
    ({}, "missing table [objective]"),
    ({"objective": {"sites": []}}, "objective.sites: unknown key"),
    ({"objective": {"targets": [{"site": "z"}]}}, "objective.targets[0].site='z'"),
    ({"objective": {"targets": [{"site": "x", "quantity": "grad"}]}}, "quantity='grad'"),
    ({"objective": {"targets": [{"site": "x", "step": -1}]}}, "step=-1"),
    ({"objective": {"conventions": {"x.rk4": "rms"}}}, "discretisation='rk4'"),
    ({"objective": {"conventions": {"x": "l3"}}}, "conventions.x='l3'"),
    ({"objective": {"update_sites": ["grad_x"]}}, "update_sites='grad_x'"),
    ({"objective": {"init_knobs": [{"role": "out_proj", "site": "y"}]}}, "role='out_proj'"),
    ({"objective": {"init_knobs": [{"role": "x_proj_C", "site": "cx", "after": ["x_proj_B"]}]}}, "after="),
    ({"objective": {"tolerance": 0}}, "tolerance=0"),
    ({"objective": {"grid": "1/0"}}, "grid='1/0'"),
    ({"objective": {"max_iterations": 99}}, "max_iterations=99"),
])
def test_a_bad_objective_is_one_error_naming_the_key(table, message):
    with pytest.raises(ConfigError, match=None) as err:
        parse_objective(table, "goal.toml")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_an_objective_file_overrides_only_what_it_names(tmp_path):
    path = tmp_path / "goal.toml"
    path.write_text('[objective]\ntolerance = 0.1\ntargets = [{site = "y", quantity = "delta_init", step = 2}]\n')
    goal = load_objective(path)
    assert goal.tolerance == 0.1 and [t.label() for t in goal.targets] == ["‖Δy‖ @ step 2"]
    assert goal.grid == DEFAULT_OBJECTIVE.grid and goal.init_knobs == DEFAULT_OBJECTIVE.init_knobs
    with pytest.raises(ConfigError, match="does not exist"):
        load_objective(tmp_path / "none.toml")


# --- preset tables ----------------------------------------------------------------------------------
def test_rewriting_a_preset_keeps_everything_it_does_not_touch():
    raw = base_raw()
    text = preset_toml.render(raw, ["a comment"])
    assert parse_preset(tomllib.loads(text), "copy").rules == load_preset("mup-ssm").rules
    new = preset_toml.with_exponents(raw, {("x_proj_B", "euler", "lr.adam"): (F(-1), F(-1, 4)),
                                           ("x_proj_C", "zoh", "init"): (F(-1, 2), F(-1, 4)),
                                           ("in_proj", "zoh", "lr.adam"): (F(-1), F(0))})  # unchanged value
    solved = parse_preset(tomllib.loads(preset_toml.render(new, [])), "solved")
    before = load_preset("mup-ssm")
    changed = {(r.value, d) for r in ROLES_OF_FAMILY[Family.MAMBA] for d in ("zoh", "euler")
               if before.scaling(r, d) != solved.scaling(r, d)}
    assert changed == {("x_proj_B", "euler"), ("x_proj_C", "zoh")}
    assert str(solved.scaling(Role.X_PROJ_B, "euler").lr["adam"]) == "N_u^-1·N_x^-1/4"
    assert str(solved.scaling(Role.X_PROJ_B, "euler").lr["sgd"]) == "N_u^-1"  # the other family kept
    assert str(solved.scaling(Role.X_PROJ_C, "zoh").init) == "N_u^-1/2·N_x^-1/4"
    assert str(solved.scaling(Role.X_PROJ_C, "euler").init) == "N_u^-1/2·N_x^-1/2"


def test_equal_discretisations_fold_into_the_common_rule():
    raw = base_raw()
    new = preset_toml.with_exponents(raw, {("A_log", "euler", "lr.sgd"): (F(1), F(0))})
    assert "euler" not in new["roles"]["A_log"]  # both discretisations now share the common rule
    assert parse_preset(tomllib.loads(preset_toml.render(new, [])), "x").rules is not None


def test_round_to_grid():
    assert [round_to_grid(v, F(1, 4)) for v in (0.12, 0.13, -0.38, 0.875, -0.0)] == [0, F(1, 4), F(-1, 2), F(1), 0]


# --- groups --------------------------------------------------------------------------------------------
def test_group_slopes_and_shares_recover_the_world():
    world = World({"euler": {"W_B": 0.5, "W_C": -0.25}}, base_raw(), noise=0.0)
    frame = world(base_raw(), 0)
    fits = group_slopes(frame, sites=("y",), layers="mean", step="last", n_boot=0)
    got = dict(fits.select("group", "estimate").iter_rows())
    assert got["W_B"] == pytest.approx(0.5) and got["W_C"] == pytest.approx(-0.25) and got["A_log"] == pytest.approx(0)
    shares = contributions(frame).filter((pl.col("site") == "y") & (pl.col("run_id").str.contains("u32-")))
    total = sum(a * a for a in AMPLITUDE.values())
    assert shares.filter(pl.col("group") == "upstream")["energy_share"][0] == pytest.approx(0.25 / total)
    assert fits.filter(pl.col("group") == "")["contribution_ratio"].item() == 1.0


def test_a_store_without_group_probes_is_one_line_naming_the_fix():
    frame = World({"zoh": {"W_B": 0.5}}, base_raw(), groups=False)(base_raw(), 0)
    with pytest.raises(ConfigError) as err:
        propose(frame, DEFAULT_OBJECTIVE, group_roles=GROUP_ROLES, family="adam")
    assert str(err.value) == NO_GROUP_PROBES and "group_probes = true" in NO_GROUP_PROBES
    with pytest.raises(ConfigError, match="group_probes = true"):
        group_slopes(frame)


# --- the solve loop -----------------------------------------------------------------------------------
KNOWN = {"euler": {"x": 0.25, "cx": 0.75, "W_B": 0.5, "W_C": -0.5, "A_log": 0.25},
         "zoh": {"W_B": -0.25, "upstream": 0.5}}


def test_the_solver_recovers_known_exponents():
    base = base_raw()
    world = World(KNOWN, base)
    result = solve(base, world, DEFAULT_OBJECTIVE, group_roles=GROUP_ROLES, family="adam", n_boot=200)
    assert result.converged and result.chosen == 1 and len(world.calls) == 2, result.reason
    solved = result.raw
    want = {  # (role, disc, kind) → change of (n_u, n_x): state roles move along N_x, the others along N_u
        ("x_proj_B", "euler", "init"): (0, F(-1, 4)), ("x_proj_C", "euler", "init"): (0, F(-1, 2)),
        ("x_proj_B", "euler", "lr.adam"): (0, F(-1, 2)), ("x_proj_C", "euler", "lr.adam"): (0, F(1, 2)),
        ("A_log", "euler", "lr.adam"): (0, F(-1, 4)),
        ("x_proj_B", "zoh", "lr.adam"): (0, F(1, 4)),
        **{(r, "zoh", "lr.adam"): (F(-1, 2), 0) for r in GROUP_ROLES["upstream"]},
    }
    for role in (r.value for r in ROLES_OF_FAMILY[Family.MAMBA]):
        for disc in ("zoh", "euler"):
            for kind in ("init", "lr.adam", "lr.sgd"):
                before = preset_toml.exponents(base, role, disc, kind)
                after = preset_toml.exponents(solved, role, disc, kind)
                delta = want.get((role, disc, kind), (0, 0))
                assert (after[0] - before[0], after[1] - before[1]) == delta, (role, disc, kind)
    assert result.iterations[-1].worst < 0.05


def test_the_solver_recovers_n_u_and_n_x_exponents_separately_on_a_2d_grid():
    base = base_raw()
    world = World({"euler": {"x": (0.25, 0.0), "W_B": (0.5, -0.25), "upstream": (0.0, 0.5)}}, base, n_x=(16, 32, 64))
    result = solve(base, world, DEFAULT_OBJECTIVE, group_roles=GROUP_ROLES, family="adam", design="2d", n_boot=200)
    assert result.converged and result.chosen == 1, result.reason
    assert set(result.iterations[0].targets["term"]) == {"n_u", "n_x"}

    def moved(role: str, kind: str) -> tuple:
        after = preset_toml.exponents(result.raw, role, "euler", kind)
        before = preset_toml.exponents(base, role, "euler", kind)
        return after[0] - before[0], after[1] - before[1]

    assert moved("x_proj_B", "init") == (F(-1, 4), 0)
    assert moved("x_proj_B", "lr.adam") == (F(-1, 2), F(1, 4))
    assert all(moved(r, "lr.adam") == (0, F(-1, 2)) for r in GROUP_ROLES["upstream"])  # 2-D: N_x even for N_u roles
    assert moved("x_proj_C", "init") == (F(1, 4), 0)  # C·x ∝ c_C·c_B: the readout makes up for the read-in
    assert moved("x_proj_C", "lr.adam") == (0, 0)


def test_a_preset_that_is_already_flat_is_left_unchanged():
    base = base_raw()
    world = World({"zoh": {}, "euler": {}}, base)
    result = solve(base, world, DEFAULT_OBJECTIVE, group_roles=GROUP_ROLES, family="adam", n_boot=200)
    assert result.converged and result.chosen == 0 and len(world.calls) == 1
    assert result.raw == base and result.iterations[0].shifts == []


def test_noise_is_not_chased_and_an_unreachable_objective_stalls_with_its_reason():
    """Per-row noise of 0.6 (log2 units): W_B's slope (resolved) is flattened; what is left is noise in the
    per-layer targets, which no knob resolves, so the solver stops there and says why."""
    base = base_raw()
    noisy = World({"euler": {"W_B": 0.3}}, base, noise=0.6)
    result = solve(base, noisy, DEFAULT_OBJECTIVE, group_roles=GROUP_ROLES, family="adam", n_boot=200)
    first, second = result.iterations
    assert [(s.knob, s.shift) for s in first.shifts if s.shift != 0] == [("lr W_B", F(-1, 4))]
    assert not result.converged and result.reason.startswith("stalled") and "CI that excludes 0" in result.reason
    assert all(s.shift == 0 for s in second.shifts) and not second.all_flat
    limit = solve(base, World({"euler": {"W_B": 0.5}}, base), Objective(max_iterations=0),
                  group_roles=GROUP_ROLES, family="adam", n_boot=100)
    assert not limit.converged and "iteration limit" in limit.reason and limit.chosen == 0


def test_target_slopes_report_every_layer_discretisation_and_regime():
    base = base_raw()
    frame = World(KNOWN, base, noise=0.0)(base, 0)
    targets = target_slopes(frame, DEFAULT_OBJECTIVE, n_boot=0)
    assert targets.height == 4 * 2 * 2  # targets × layers × discretisations
    euler_x = targets.filter((pl.col("discretization") == "euler") & (pl.col("target") == "‖x‖ @ step last"))
    assert euler_x["estimate"].to_list() == pytest.approx([0.25, 0.25]) and not euler_x["flat"].any()
    assert set(targets.filter(pl.col("discretization") == "zoh", pl.col("site") == "x")["convention"]) == {
        "channel_l2"}
    assert targets["regime"].null_count() == 0
    assert (targets["regime"] == "nonlinear").to_list() == (targets["regime_ratio"] > 1).to_list()
    zoh_dy = targets.filter((pl.col("discretization") == "zoh") & (pl.col("target") == "‖Δy‖ @ step last"))
    total = np.sqrt(sum((a * 2 ** (3 * KNOWN["zoh"].get(g, 0))) ** 2 for g, a in AMPLITUDE.items()))
    assert zoh_dy["regime_ratio"].to_list() == pytest.approx([total, total])  # q_0 = ‖y‖ = 1 in the world


# --- the command --------------------------------------------------------------------------------------
def _param(*args: str):
    from ssmscope.runs.cli.main import app

    return CliRunner().invoke(app, ["param", "fit", *args])


@pytest.mark.parametrize(("args", "message"), [
    (["mup-ssm", "--spec", "paper-figure", "--out", "x.txt"], "--out='x.txt'"),
    (["nobody", "--spec", "paper-figure", "--out", "OUT"], "preset='nobody'"),
    (["mup-ssm", "--spec", "hp-transfer", "--out", "OUT"], "one learning rate"),
    (["mup-ssm", "--spec", "paper-figure", "--out", "OUT", "--grid", "2"], "--grid='2'"),
    (["mup-ssm", "--spec", "paper-figure", "--out", "OUT", "--objective", "none.toml"], "does not exist"),
    (["mup-ssm", "--spec", "paper-figure", "--out", "EXISTS"], "exists; pass --force"),
])
def test_param_fit_user_errors_are_one_line_and_exit_2(tmp_path, args, message):
    (tmp_path / "exists.toml").write_text("")
    args = [a.replace("OUT", str(tmp_path / "new.toml")).replace("EXISTS", str(tmp_path / "exists.toml"))
            for a in args]
    result = _param(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1


TINY = """
[sweep]
name = "tiny-fit"
[grid]
widths = [8, 16, 32]
presets = ["sp"]
discretizations = ["zoh"]
optimizers = ["adam"]
lrs = [0.01]
seeds = [0]
[train]
steps = 1
batch = 1
seq_len = 4
n_layers = 1
"""


@pytest.mark.slow
def test_param_fit_sweeps_writes_an_ordinary_preset_and_reuses_its_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.toml").write_text(TINY)
    db = str(tmp_path / "store.duckdb")
    out = tmp_path / "solved.toml"
    result = _param("mup-ssm", "--spec", "tiny.toml", "--out", str(out), "--db", db, "--max-iter", "0",
                    "--n-boot", "50")
    assert result.exit_code in (0, 1), result.output
    assert "iteration 0: sweeping mup-ssm (3 runs" in result.output and "before / after" in result.output
    text = out.read_text()
    assert "EMPIRICAL" in text and "N_u = N_x ∈ {8, 16, 32}" in text and f"Store: {db}" in text
    preset = load_preset(str(out))
    assert preset.name == "solved" and preset.rules == load_preset("mup-ssm").rules  # no re-sweep: unchanged
    again = _param("mup-ssm", "--spec", "tiny.toml", "--out", str(out), "--db", db, "--max-iter", "0",
                   "--n-boot", "0", "--force")
    assert "0 completed, 0 diverged, 0 failed, 3 reused" in again.output
    from ssmscope.runs.cli.main import app

    shown = CliRunner().invoke(app, ["param", "show", str(out), "--d-model", "64"])
    assert shown.exit_code == 0 and "covered by preset 'solved'" in shown.output
    assert Path(tmp_path / "store.duckdb").exists()


def test_the_documented_solved_preset_is_an_ordinary_preset_that_differs_from_mup_ssm_where_docs_say():
    """docs/examples/solved-paper-figure.toml (docs/results.md, docs/theory.md §8) loads like any preset and
    moves exactly the four exponents the docs list: W_B init and Adam LR and A_log Adam LR under Euler by
    +1/4, +3/4, +3/4 in N_x; W_C Adam LR under ZOH by −1/4 in N_x."""
    path = Path(__file__).resolve().parents[1] / "docs" / "examples" / "solved-paper-figure.toml"
    solved, base = load_preset(str(path)), load_preset("mup-ssm")
    assert solved.init_base.name == base.init_base.name == "mamba"
    moved = {}
    for disc in solved.rules:
        for role, rule in solved.rules[disc].items():
            other = base.rules[disc][role]
            for kind, a, b in (("init", rule.init, other.init), ("lr.adam", rule.lr["adam"], other.lr["adam"]),
                               ("lr.sgd", rule.lr["sgd"], other.lr["sgd"])):
                for axis in ("n_u", "n_x"):
                    if getattr(a, axis) != getattr(b, axis):
                        moved[(str(disc), role.value, kind, axis)] = getattr(a, axis) - getattr(b, axis)
    assert moved == {("euler", "x_proj_B", "init", "n_x"): F(1, 4), ("euler", "x_proj_B", "lr.adam", "n_x"): F(3, 4),
                     ("euler", "A_log", "lr.adam", "n_x"): F(3, 4), ("zoh", "x_proj_C", "lr.adam", "n_x"): F(-1, 4)}
