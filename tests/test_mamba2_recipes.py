"""The public Mamba-2 µP recipes as presets, each checked against a table of its rules written here.

The tables below are written from the recipes' sources as the project's notes on them record them (the table of
public Mamba-2 µP recipes: lm-engine HEAD and PR #131, Megatron-LM's generic rule, ArchScale µP++, mambapy,
Falcon-H1), not from the preset files: per role the Adam learning-rate factor, the init-std factor and the forward
multiplier at 4× the base width (m = 4), and whether weight decay applies. Each preset is then built on a Mamba2LM at
its base width and at 4× and its `plan` rows are compared with the table. Also here: the format's `decay` and
`mult_base` keys on an S6 preset, and their one-line errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import ssmscope.ssm
from ssmscope.runs.cli.main import app
from ssmscope.ssm.apply import apply_preset, build_optimizer, plan
from ssmscope.ssm.config import MambaConfig
from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.mamba2 import Mamba2Config, Mamba2LM
from ssmscope.ssm.model import MambaLM
from ssmscope.ssm.predictions import lookup
from ssmscope.ssm.presets import builtin_names, load_preset
from ssmscope.ssm.roles import ROLES_OF_FAMILY, Family, InitKind, Role

PRESET_DIR = Path(ssmscope.ssm.__file__).parent / "presets"
M = 4  # width ratio of the wide model
BASE_D_MODEL = 32  # the presets' base width: d_inner 64 = 2 · 32, 4 heads of 16, d_state 16


@dataclass(frozen=True)
class Rule:
    """What a recipe gives a role at m = 4: Adam LR factor, init std factor (None: structural or tied; 0: zero
    init), forward multiplier (None: no linear map), weight decay on."""

    lr: float = 1.0
    init: float | None = 1.0
    mult: float | None = None
    decay: bool = True


# Building blocks, each a sentence of the recipes' table.
MATRIX = Rule(lr=1 / M, init=1 / math.sqrt(M), mult=1.0)  # µP hidden matrix: init σ/√m, Adam LR/m
VECTOR = Rule()  # base LR, width-independent init
STRUCT = Rule(init=None)  # structural init (A_log, dt_bias): base LR
SP_MATRIX = Rule(init=1 / math.sqrt(M), mult=1.0)  # SP: fan-in init, one global LR
TIED_LOGITS = Rule(lr=1.0, init=None, mult=1 / M, decay=True)  # tied readout: logits × 1/m on the shared matrix
IN_PROJ = ("in_proj_z", "in_proj_x", "in_proj_B", "in_proj_C", "in_proj_dt")


def table(**rules: Rule) -> dict[str, Rule]:
    """Every Mamba-2 role's rule; `rules` must name all of them."""
    assert set(rules) == {r.value for r in ROLES_OF_FAMILY[Family.MAMBA2]}, set(rules) ^ {
        r.value for r in ROLES_OF_FAMILY[Family.MAMBA2]}
    return rules


def lmengine(a_log_d: Rule) -> dict[str, Rule]:
    return table(
        embedding=Rule(mult=1.0), **dict.fromkeys(IN_PROJ, MATRIX),
        conv_weight=Rule(lr=1 / M, init=1 / math.sqrt(M)),  # conv1d.weight: init σ/√m; LR/m
        conv_bias=VECTOR, dt_bias=Rule(init=None, decay=False),  # dt_bias: base LR, no WD
        A_log=Rule(lr=a_log_d.lr, init=None, decay=a_log_d.decay), D=a_log_d,
        gated_norm=VECTOR, out_proj=MATRIX, norm=VECTOR, readout=TIED_LOGITS)


EXPECTED: dict[str, dict[str, Rule]] = {
    # HEAD 36bad91e: A_log and D LR/m and weight-decayed (µP-LR mark checked before the no-WD mark)
    "mamba2-lmengine": lmengine(Rule(lr=1 / M, decay=True)),
    # PR #131: A_log and D base LR, no WD
    "mamba2-lmengine-pr131": lmengine(Rule(lr=1.0, decay=False)),
    # ≥2-D → LR/m (conv1d.weight is 3-D); 1-D and embedding base LR; logits × 1/m
    "mamba2-megatron": table(
        embedding=Rule(mult=1.0), **dict.fromkeys(IN_PROJ, MATRIX), conv_weight=Rule(lr=1 / M),
        conv_bias=VECTOR, dt_bias=STRUCT, A_log=STRUCT, D=VECTOR, gated_norm=VECTOR, out_proj=MATRIX, norm=VECTOR,
        readout=TIED_LOGITS),
    # µP++ width part: matrix rule; conv1d, wte, lm_head, norms vectors with WD 0; logits × 1/m
    "mamba2-archscale": table(
        embedding=Rule(mult=1.0, decay=False), **dict.fromkeys(IN_PROJ, MATRIX),
        conv_weight=Rule(decay=False), conv_bias=Rule(decay=False), dt_bias=STRUCT, A_log=STRUCT, D=VECTOR,
        gated_norm=Rule(decay=False), out_proj=MATRIX, norm=Rule(decay=False), readout=TIED_LOGITS),
    # zero-initialised conv1d at base LR; A_log, D base LR no WD; logits × 1/m before an untied zero head
    "mamba2-mambapy": table(
        embedding=Rule(mult=1.0), **dict.fromkeys(IN_PROJ, MATRIX), conv_weight=Rule(init=0.0),
        conv_bias=VECTOR, dt_bias=STRUCT, A_log=Rule(init=None, decay=False), D=Rule(decay=False),
        gated_norm=VECTOR, out_proj=MATRIX, norm=VECTOR, readout=Rule(lr=1.0, init=0.0, mult=1 / M)),
    # fixed multipliers (0.5B): in_proj slices × 1.25 × [0.35355, 0.25, 0.35355, 0.5, 0.35355], out × 0.23570,
    # embedding × 5.65685, lm_head × 0.0390625, untied; SP's exponents
    "mamba2-falconh1": table(
        embedding=Rule(mult=5.65685),
        in_proj_z=Rule(init=0.5, mult=1.25 * 0.35355), in_proj_x=Rule(init=0.5, mult=1.25 * 0.25),
        in_proj_B=Rule(init=0.5, mult=1.25 * 0.35355), in_proj_C=Rule(init=0.5, mult=1.25 * 0.5),
        in_proj_dt=Rule(init=0.5, mult=1.25 * 0.35355),
        conv_weight=VECTOR, conv_bias=VECTOR, dt_bias=STRUCT, A_log=STRUCT, D=VECTOR, gated_norm=VECTOR,
        out_proj=Rule(init=0.5, mult=0.23570), norm=VECTOR, readout=Rule(init=0.5, mult=0.0390625)),
    # docs/theory.md §10 at fixed N_x: B, C, dt, z, x rows hidden matrices in N_u; per-head vectors vector-like
    "mamba2-mup-ssm": table(
        embedding=Rule(mult=1.0), **dict.fromkeys(IN_PROJ, MATRIX), conv_weight=VECTOR, conv_bias=VECTOR,
        dt_bias=STRUCT, A_log=STRUCT, D=VECTOR, gated_norm=VECTOR, out_proj=MATRIX, norm=VECTOR, readout=TIED_LOGITS),
}
BASE_MULT = {"mamba2-falconh1": {role: r.mult for role, r in EXPECTED["mamba2-falconh1"].items() if r.mult}}
"""Multipliers at the base width (1 wherever a role has one, except Falcon-H1's constants and the readout's 1/m,
which is 1 at m = 1)."""


def model_at(d_model: int, d_state: int = 16) -> tuple[Mamba2Config, Mamba2LM]:
    cfg = Mamba2Config(d_model=d_model, n_layers=2, vocab_size=64, d_state=d_state, headdim=16)
    return cfg, Mamba2LM(cfg)


def rows_by_role(name: str, d_model: int, d_state: int = 16, lr: float = 1.0) -> dict[str, object]:
    """One plan row per role (layer 0's for the mixer's, the final norm's skipped), with the model tied or untied
    as the preset says (apply_preset does it)."""
    cfg, model = model_at(d_model, d_state)
    preset = load_preset(name)
    apply_preset(model, cfg, preset, "adam", lr)
    out = {}
    for r in plan(model, cfg, preset, "adam", lr):
        if r.layer in (None, 0) and r.name != "norm_f.weight":
            out[str(r.role)] = r
    return out


def test_every_recipe_is_a_builtin_mamba2_preset_with_its_sources_and_covers_every_parameter():
    assert set(EXPECTED) <= set(builtin_names(Family.MAMBA2))
    cfg, model = model_at(2 * BASE_D_MODEL)
    for name in EXPECTED:
        preset = load_preset(name)
        assert preset.family == Family.MAMBA2 and (preset.base_n_u, preset.base_n_x) == (64, 16), name
        head = (PRESET_DIR / f"{name}.toml").read_text(encoding="utf-8").split("[preset]")[0]
        assert "sources:" in head, name
        rows = plan(model, cfg, preset, "adam", 1e-3)
        assert all(r.role is not None for r in rows), name
        assert {r.role for r in rows} == set(ROLES_OF_FAMILY[Family.MAMBA2]), name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_plan_at_base_and_4x_width_matches_its_table(name):
    base, wide = rows_by_role(name, BASE_D_MODEL), rows_by_role(name, M * BASE_D_MODEL)
    assert set(wide) == set(EXPECTED[name])
    for role, rule in EXPECTED[name].items():
        b, w = base[role], wide[role]
        where = f"{name}: {role}"
        if w.init_kind == InitKind.TIED:  # tied readout: the embedding's init and lr, its own multiplier
            assert rule.init is None and rule.lr == 1.0, where
            assert w.multiplier == pytest.approx(rule.mult), where
            assert b.multiplier == pytest.approx(1.0), where
            continue
        assert b.lr == pytest.approx(1.0), where  # every recipe is its base's own at the base width
        assert w.lr == pytest.approx(rule.lr), where
        assert w.decay is rule.decay, where
        if rule.init is None:
            assert w.init_kind == InitKind.STRUCTURAL, where
        elif rule.init == 0.0:
            assert w.init_kind == InitKind.CONSTANT and w.init_scale == 0.0 and b.init_scale == 0.0, where
        else:
            assert w.init_scale / b.init_scale == pytest.approx(rule.init), where
        if rule.mult is None:
            assert w.multiplier is None, where
        else:
            assert w.multiplier == pytest.approx(rule.mult, rel=1e-9), where
            assert b.multiplier == pytest.approx(BASE_MULT.get(name, {}).get(role, 1.0), rel=1e-9), where


def test_mup_ssm_for_ssd_scales_b_and_c_rows_with_the_state_size():
    """At 4× d_state (N_u fixed): B's Adam LR N_x^-1/2, C's init N_x^-1/2 and LR N_x^-1, the rest flat."""
    base, wide = rows_by_role("mamba2-mup-ssm", BASE_D_MODEL, 16), rows_by_role("mamba2-mup-ssm", BASE_D_MODEL, 64)
    assert wide["in_proj_B"].lr == pytest.approx(0.5) and wide["in_proj_C"].lr == pytest.approx(0.25)
    assert wide["in_proj_C"].init_scale / base["in_proj_C"].init_scale == pytest.approx(0.5)
    assert wide["in_proj_B"].init_scale == pytest.approx(base["in_proj_B"].init_scale)
    assert all(wide[r].lr == pytest.approx(1.0) for r in ("in_proj_z", "in_proj_x", "in_proj_dt", "A_log", "D"))


def test_falconh1_multipliers_reach_the_modules_and_the_readout_is_untied():
    cfg, model = model_at(M * BASE_D_MODEL)
    apply_preset(model, cfg, load_preset("mamba2-falconh1"), "adam", 1e-3)
    assert not model.readout_tied
    mixer = model.layers[0].mixer
    assert mixer.in_proj.C.multiplier == pytest.approx(0.625)
    assert mixer.in_proj.x.multiplier == pytest.approx(0.3125)
    assert mixer.out_proj.multiplier == pytest.approx(0.2357)
    assert model.lm_head.multiplier == pytest.approx(0.0390625)
    assert model.embedding.multiplier == pytest.approx(5.65685)


def test_lmengine_groups_decay_a_log_and_d_and_exempt_dt_bias():
    cfg, model = model_at(BASE_D_MODEL)
    groups = apply_preset(model, cfg, load_preset("mamba2-lmengine"), "adamw", 1e-3)
    opt = build_optimizer(groups, "adamw", weight_decay=0.1)
    decay = {g["name"]: g["weight_decay"] for g in opt.param_groups}
    assert decay["layers.0.mixer.A_log"] == 0.1 and decay["layers.0.mixer.D"] == 0.1
    assert decay["layers.0.mixer.dt_bias"] == 0.0 and decay["layers.0.mixer.in_proj.z.weight"] == 0.1


# ----------------------------------------------------------------------------- the format's keys on S6


def _sp_with(path: Path, extra: dict[str, str]) -> Path:
    """sp.toml with `extra` lines added to roles (role → lines), written to `path`."""
    text = (PRESET_DIR / "sp.toml").read_text(encoding="utf-8")
    for role, lines in extra.items():
        header = f"[roles.{role}]"
        start = text.index(header)
        end = text.index("\n\n", start) if "\n\n" in text[start:] else len(text)
        text = text[:end] + "\n" + lines + text[end:]
    path.write_text(text, encoding="utf-8")
    return path


def test_an_s6_preset_with_decay_and_mult_base_trains_with_them(tmp_path):
    path = _sp_with(tmp_path / "sp-wd.toml", {"D": "decay = false", "A_log": "decay = false",
                                              "in_proj": "mult_base = 0.5"})
    cfg = MambaConfig(d_model=32, d_state=8, n_layers=2, vocab_size=64)
    model = MambaLM(cfg)
    groups = apply_preset(model, cfg, load_preset(path), "adamw", 1e-2)
    opt = build_optimizer(groups, "adamw", weight_decay=0.5)
    decay = {g["name"]: g["weight_decay"] for g in opt.param_groups}
    assert decay["layers.1.mixer.D"] == 0.0 and decay["layers.1.mixer.A_log"] == 0.0
    assert decay["layers.1.mixer.in_proj.weight"] == 0.5
    assert model.layers[0].mixer.in_proj.multiplier == 0.5
    rows = {r.name: r for r in plan(model, cfg, load_preset(path), "adamw", 1e-2)}
    assert rows["layers.0.mixer.in_proj.weight"].mult_base == 0.5 and rows["layers.0.mixer.D"].decay is False
    # a zero gradient step: AdamW shrinks the decayed weights only
    d_before, w_before = model.layers[0].mixer.D.detach().clone(), model.layers[0].mixer.in_proj.weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.equal(model.layers[0].mixer.D, d_before)
    assert torch.allclose(model.layers[0].mixer.in_proj.weight, w_before * (1 - 1e-2 * 0.5))


@pytest.mark.parametrize(("role", "line", "message"), [
    ("D", 'decay = "no"', r"roles\.D\.decay='no'; allowed: true or false$"),
    ("D", "decay = 1", r"roles\.D\.decay=1; allowed: true or false$"),
    ("in_proj", "mult_base = 0", r"roles\.in_proj\.mult_base=0; allowed: a positive number from 0\.001 to 1000$"),
    ("in_proj", "mult_base = -2", r"roles\.in_proj\.mult_base=-2; allowed: a positive number"),
    ("in_proj", "mult_base = 1e9", r"roles\.in_proj\.mult_base"),
    ("in_proj", 'mult_base = "big"', r"roles\.in_proj\.mult_base='big'; allowed: a number"),
    ("A_log", "mult_base = 2", r"roles\.A_log\.mult_base: role A_log has no linear map to multiply$"),
])
def test_invalid_decay_and_mult_base_are_one_line_config_errors(tmp_path, role, line, message):
    path = _sp_with(tmp_path / "bad.toml", {role: line})
    with pytest.raises(ConfigError, match=message) as info:
        load_preset(path)
    assert "\n" not in str(info.value)


def test_mult_base_and_decay_can_be_overridden_per_discretisation(tmp_path):
    path = _sp_with(tmp_path / "sp-euler.toml", {"in_proj": "[roles.in_proj.euler]\nmult_base = 2\ndecay = false"})
    preset = load_preset(path)
    assert preset.scaling(Role.IN_PROJ, "euler").mult_base == 2.0 and not preset.scaling(Role.IN_PROJ, "euler").decay
    assert preset.scaling(Role.IN_PROJ, "zoh").mult_base == 1.0 and preset.scaling(Role.IN_PROJ, "zoh").decay


# ----------------------------------------------------------------------------- ssmscope param diff


def _diff_cells(output: str) -> list[list[str]]:
    """The table rows of `param diff`'s output as cells (marker, role, what, A, B)."""
    rows = []
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 5 and cells[1] and cells[1] != "role":
            rows.append(cells)
    return rows


def test_param_diff_of_the_two_lmengine_recipes_differs_exactly_on_a_log_and_d():
    result = CliRunner().invoke(app, ["param", "diff", "mamba2-lmengine", "mamba2-lmengine-pr131"])
    assert result.exit_code == 0, result.output
    rows = _diff_cells(result.output)
    marked = {(r[1], r[2], r[3], r[4]) for r in rows if r[0] == "≠"}
    assert marked == {("A_log", "lr ∝ (adam)", "N_u^-1", "1"), ("A_log", "weight decay", "on", "off"),
                      ("D", "lr ∝ (adam)", "N_u^-1", "1"), ("D", "weight decay", "on", "off")}
    unmarked = {(r[1], r[2]): (r[3], r[4]) for r in rows if r[0] == ""}
    assert unmarked[("in_proj_B", "init ∝")] == ("N_u^-1/2", "N_u^-1/2")
    assert unmarked[("dt_bias", "weight decay")] == ("off", "off")
    assert unmarked[("preset", "init base")] == ("mamba2", "mamba2")
    assert len(rows) == 65 and "4 of 65 rows differ (A_log, D)" in result.output
    only = CliRunner().invoke(app, ["param", "diff", "mamba2-lmengine", "mamba2-lmengine-pr131", "--only-diff"])
    assert only.exit_code == 0 and {tuple(r[1:]) for r in _diff_cells(only.output)} == marked


def test_param_diff_of_s6_presets_shows_fractions_per_optimizer_and_discretisation():
    result = CliRunner().invoke(app, ["param", "diff", "mup", "mup-ssm", "--discretization", "euler",
                                      "--optimizer", "sgd", "--only-diff"])
    assert result.exit_code == 0, result.output
    rows = {(r[1], r[2]): (r[3], r[4]) for r in _diff_cells(result.output)}
    assert rows == {("x_proj_B", "init ∝"): ("N_u^-1·N_x^1/2", "N_u^-1/2"),
                    ("x_proj_B", "lr ∝ (sgd)"): ("N_u^-1·N_x^1", "N_u^-1"),
                    ("x_proj_C", "init ∝"): ("N_u^-1·N_x^1/2", "N_u^-1/2·N_x^-1/2"),
                    ("x_proj_C", "lr ∝ (sgd)"): ("N_u^-1·N_x^1", "N_u^-1·N_x^-1"),
                    ("A_log", "lr ∝ (sgd)"): ("N_u^1", "N_u^1·N_x^1/2")}


def test_param_diff_shows_constant_multipliers_base_and_readout():
    result = CliRunner().invoke(app, ["param", "diff", "mamba2-sp", "mamba2-falconh1", "--only-diff"])
    assert result.exit_code == 0, result.output
    rows = {(r[1], r[2]): (r[3], r[4]) for r in _diff_cells(result.output)}
    assert rows[("preset", "readout")] == ("base", "untied")
    assert rows[("in_proj_C", "mult base")] == ("1", "0.625")
    assert rows[("readout", "mult base")] == ("1", "0.0390625")
    assert all(what == "mult base" for role, what in rows if role != "preset")
    mambapy = CliRunner().invoke(app, ["param", "diff", "mamba2-mup", "mamba2-mambapy", "--only-diff"])
    cells = {(r[1], r[2]): (r[3], r[4]) for r in _diff_cells(mambapy.output)}
    assert cells[("preset", "init base")] == ("mamba2", "mamba2-zero-conv")


@pytest.mark.parametrize(("args", "message"), [
    (["sp", "mamba2-sp"], "presets sp (mamba) and mamba2-sp (mamba2) are for different model families"),
    (["sp", "nope"], "preset='nope'; allowed:"),
])
def test_param_diff_errors_are_one_line_exit_2(args, message):
    result = CliRunner().invoke(app, ["param", "diff", *args])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output


def test_mup_ssm_for_ssd_predicts_flat_state_output_and_updates_under_both_optimizers():
    for family in ("adam", "sgd"):
        for site in ("x", "cx", "y"):
            for quantity in ("value", "delta_init"):
                p = lookup("mamba2-mup-ssm", "euler", family, site, quantity)
                assert (p.n_u, p.n_x, p.log_x) == (0, 0, False), (family, site, quantity)
        assert (lookup("mamba2-mup-ssm", "euler", family, "grad_x", "value").n_x) == -0.5
    # L2 over a token's state (N_u·N_x entries) adds ½ per axis, as for S6
    p = lookup("mamba2-mup-ssm", "euler", "adam", "x", "value", convention="token_l2")
    assert (p.n_u, p.n_x) == (0.5, 0.5)
    assert lookup("mamba2-mup-ssm", "zoh", "adam", "x", "value") is None  # SSD has no ZOH


def test_zero_conv_base_is_the_mamba2_base_but_a_zero_conv_weight():
    from ssmscope.ssm.bases import RoleBase, load_base

    zero, original = load_base("mamba2-zero-conv"), load_base("mamba2")
    assert zero.family == Family.MAMBA2 and zero.tied_readout == original.tied_readout
    assert zero.roles[Role.CONV_WEIGHT] == RoleBase(dist=InitKind.CONSTANT, scale=0.0)
    assert {r: b for r, b in zero.roles.items() if r != Role.CONV_WEIGHT} == {
        r: b for r, b in original.roles.items() if r != Role.CONV_WEIGHT}
    cfg, model = model_at(M * BASE_D_MODEL)
    apply_preset(model, cfg, load_preset("mamba2-mambapy"), "adam", 1e-3)
    assert torch.count_nonzero(model.layers[1].mixer.conv1d.weight) == 0
    assert torch.count_nonzero(model.lm_head.weight) == 0 and not model.readout_tied
