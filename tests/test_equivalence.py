"""Presets that are one parameterization for a selection, found from resolved exponents (runs.analysis.equivalence)."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import polars as pl
import pytest

from ssmscope.runs.analysis import equivalence
from ssmscope.ssm.config import Discretization
from ssmscope.ssm.presets import OptimizerFamily, builtin_names, load_preset, readout_mult_exponents

PRESETS_DIR = Path(__file__).resolve().parents[1] / "ssm" / "presets"
JOINT = [(16, 16), (32, 32), (64, 64), (128, 128)]


@pytest.mark.parametrize(("name", "disc", "family"), list(itertools.product(
    builtin_names(), [d.value for d in Discretization], [f.value for f in OptimizerFamily])))
def test_the_torch_free_resolver_reads_every_role_as_ssm_presets_does(name, disc, family):
    preset = load_preset(name)
    resolved = equivalence.resolve(name, disc, family)
    assert resolved.base == (preset.base_n_u, preset.base_n_x)
    assert set(resolved.roles) == {r.value for r in preset.roles} | {equivalence.TIED_READOUT_KEY}
    tied = readout_mult_exponents(preset, Discretization(disc))
    assert tuple(float(v) for v in resolved.roles[equivalence.TIED_READOUT_KEY]["mult"]) == (tied.n_u, tied.n_x)
    for role in preset.roles:
        rule = preset.scaling(role, Discretization(disc))
        for kind, exps in (("init", rule.init), ("lr", rule.lr[OptimizerFamily(family)]), ("mult", rule.mult)):
            assert tuple(float(v) for v in resolved.roles[role.value][kind]) == (exps.n_u, exps.n_x), (role, kind)


def test_mup_and_mup_ssm_coincide_only_under_zoh_with_adam_on_the_joint_axis():
    same = {(d, o): equivalence.same_parameterization("mup", "mup-ssm", d, o, JOINT)
            for d in ("zoh", "euler") for o in ("adam", "adamw", "sgd")}
    assert same == {("zoh", "adam"): True, ("zoh", "adamw"): True, ("zoh", "sgd"): False,
                    ("euler", "adam"): False, ("euler", "adamw"): False, ("euler", "sgd"): False}
    # off the diagonal W_B's init N_u^-1·N_x^½ and N_u^-½ differ
    assert not equivalence.same_parameterization("mup", "mup-ssm", "zoh", "adam", [(64, 16)])
    # at the base width every preset is Mamba's default: they coincide there and only there
    assert equivalence.same_parameterization("sp", "mup-ssm", "zoh", "adam", [(32, 32)])
    assert not equivalence.same_parameterization("sp", "mup-ssm", "zoh", "adam", JOINT)


def _copy_preset(tmp_path: Path, source: str, name: str, edit=lambda text: text) -> str:
    path = tmp_path / f"{name}.toml"
    shutil.copy(PRESETS_DIR / f"{source}.toml", path)
    path.write_text(edit(path.read_text()).replace(f'name = "{source}"', f'name = "{name}"'))
    return str(path)


def test_a_custom_preset_file_is_compared_by_its_exponents_not_its_name(tmp_path):
    twin = _copy_preset(tmp_path, "mup-ssm", "my-twin")
    assert all(equivalence.same_parameterization(twin, "mup-ssm", d, o, [(64, 16), *JOINT])
               for d in ("zoh", "euler") for o in ("adam", "sgd"))
    rebased = _copy_preset(tmp_path, "mup-ssm", "rebased", lambda t: t.replace("base_n_u = 32", "base_n_u = 64"))
    assert not equivalence.same_parameterization(rebased, "mup-ssm", "zoh", "adam", JOINT)
    assert not equivalence.same_parameterization(str(tmp_path / "moved.toml"), "mup-ssm", "zoh", "adam", JOINT)


def test_coincidences_group_presets_per_discretisation_and_optimizer():
    rows = [dict(preset=p, discretization=d, optimizer="adam", n_u=w, n_x=w)
            for p in ("mup-ssm", "sp", "mup") for d in ("zoh", "euler") for w in (16, 32, 64)]
    frame = pl.DataFrame(rows)
    found = equivalence.coincidences(frame, "joint", order=("sp", "mup", "mup-ssm"))
    assert found == [equivalence.Coincidence(("mup", "mup-ssm"), "zoh", "adam")]
    assert found[0].note().startswith("mup and mup-ssm are the same parameterization for zoh · adam")
    # a width that only one of them ran breaks the coincidence: their tables would not match row for row
    extra = pl.concat([frame, pl.DataFrame([dict(preset="mup", discretization="zoh", optimizer="adam", n_u=128,
                                                 n_x=128)])])
    assert equivalence.coincidences(extra, "joint") == []
    assert equivalence.coincidences(frame.head(0), "joint") == []


def test_presets_with_the_same_exponents_and_other_constants_are_not_one_parameterization():
    """Falcon-H1's recipe has SP's width exponents and its own constant multipliers and readout: not SP. The µP
    heuristic and µP-SSM for SSD differ only in N_x exponents, so at N_x = their base (16) they coincide."""
    n_u_axis = [(64, 16), (128, 16), (256, 16)]
    assert not equivalence.same_parameterization("mamba2-sp", "mamba2-falconh1", "euler", "adam", n_u_axis)
    assert equivalence.same_parameterization("mamba2-mup", "mamba2-mup-ssm", "euler", "adam", n_u_axis)
    assert not equivalence.same_parameterization("mamba2-mup", "mamba2-mup-ssm", "euler", "adam", [(64, 32)])
    # same exponents, other init base: transformers' init is not state-spaces/mamba's
    assert not equivalence.same_parameterization("mamba2-mup", "mamba2-mambapy", "euler", "adam", n_u_axis)
