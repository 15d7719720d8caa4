"""Mamba-2 under presets: roles by name, the two init bases against the originals, family checks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import ssmscope.ssm.presets as presets_module
from ssmscope.ssm.apply import apply_preset, plan
from ssmscope.ssm.bases import load_base
from ssmscope.ssm.config import MambaConfig
from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.mamba2 import Mamba2Config, Mamba2LM, init_mamba2, split_state_dict
from ssmscope.ssm.model import MambaLM
from ssmscope.ssm.presets import builtin_names, load_preset, original_exponents
from ssmscope.ssm.roles import ROLES_OF_FAMILY, Family, InitKind, Role, role_of

MAMBA2_ROLES = set(ROLES_OF_FAMILY[Family.MAMBA2])


def cfg_at(d_model: int, **kw) -> Mamba2Config:
    return Mamba2Config(**{"d_model": d_model, "n_layers": 3, "vocab_size": 64, "d_state": 16, "headdim": 16, **kw})


def rms(t: torch.Tensor) -> float:
    return t.double().pow(2).mean().sqrt().item()


def same_scale(p: torch.Tensor, q: torch.Tensor) -> bool:
    """Equal RMS to sampling error: two independent normal draws' RMS differ by 1/√n relative (σ; 4σ allowed)."""
    return rms(p) == pytest.approx(rms(q), rel=max(0.06, 4 / math.sqrt(p.numel())))


def test_every_mamba2_parameter_has_a_role_and_every_builtin_mamba2_preset_a_rule_for_it():
    names = builtin_names(Family.MAMBA2)
    assert {"mamba2-sp", "mamba2-sp-hf", "mamba2-mup"} <= set(names) and "sp" not in names
    cfg = cfg_at(64, tie_readout=False)
    model = Mamba2LM(cfg)
    assert {role_of(n) for n, _ in model.named_parameters()} == MAMBA2_ROLES
    for name in names:
        rows = plan(model, cfg, load_preset(name), "adam", 1e-3)
        assert {r.role for r in rows} == MAMBA2_ROLES, name
        assert load_preset(name).family == Family.MAMBA2


def test_sp_on_the_mamba2_base_draws_what_state_spaces_mamba_draws_at_two_widths():
    """apply_preset(mamba2-sp) against init_mamba2 (the original's code, written from mamba_ssm) role by role."""
    for d_model in (32, 256):
        cfg = cfg_at(d_model)
        ours = Mamba2LM(cfg)
        apply_preset(ours, cfg, load_preset("mamba2-sp"), "adam", 1e-3, seed=1)
        original = init_mamba2(Mamba2LM(cfg), seed=2)
        assert ours.readout_tied and original.readout_tied
        theirs = dict(original.named_parameters())
        for name, p in ours.named_parameters():
            q = theirs[name]
            role = role_of(name)
            if role in (Role.D, Role.GATED_NORM, Role.NORM):
                assert torch.equal(p, q), name
            elif role == Role.A_LOG:  # A ~ U(1, 16): both in range, means near log's mean
                assert p.min() >= 0 and p.max() <= math.log(16) + 1e-6, name
            elif role == Role.DT_BIAS:
                dt = torch.nn.functional.softplus(p)
                assert dt.min() >= cfg.dt_min * (1 - 1e-5) and dt.max() <= cfg.dt_max * (1 + 1e-5)
            else:  # uniform or normal: the same bound and the same RMS to sampling error
                assert same_scale(p, q), name
                if role != Role.EMBEDDING:
                    assert p.abs().max() <= q.abs().max() * 1.05 + 1e-9, name


def test_hf_mamba2_base_is_what_an_instantiated_transformers_mamba2_draws():
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    if not hasattr(transformers, "Mamba2ForCausalLM"):
        pytest.skip("this transformers has no Mamba2ForCausalLM")
    for heads in (8, 32):
        hf_cfg = transformers.Mamba2Config(num_heads=heads, head_dim=16, hidden_size=heads * 8, state_size=16,
                                           n_groups=1, vocab_size=64, num_hidden_layers=3, expand=2)
        torch.manual_seed(0)
        hf = transformers.Mamba2ForCausalLM(hf_cfg)
        theirs = {k.removeprefix("backbone.").replace("embeddings.", "embedding."): v.detach()
                  for k, v in hf.state_dict().items()}
        cfg = cfg_at(heads * 8, tie_readout=None)
        theirs = split_state_dict(theirs, cfg)
        ours = Mamba2LM(cfg)
        apply_preset(ours, cfg, load_preset("mamba2-sp-hf"), "adam", 1e-3, seed=0)
        assert not ours.readout_tied and not hf_cfg.tie_word_embeddings  # the base unties, as transformers
        for name, p in ours.named_parameters():
            q = theirs[name]
            role = role_of(name)
            if role in (Role.A_LOG, Role.D, Role.GATED_NORM, Role.NORM, Role.CONV_BIAS):
                torch.testing.assert_close(p, q.to(p.dtype), rtol=0, atol=1e-6, msg=name)
            elif role == Role.DT_BIAS:
                dt = torch.nn.functional.softplus(q)
                assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5)
            else:
                assert same_scale(p, q), name
        A_log = ours.mixers[0].A_log
        assert torch.allclose(A_log, torch.log(torch.arange(1, heads + 1, dtype=A_log.dtype)))


def test_sp_init_exponents_are_each_bases_own_width_laws():
    for preset, base in (("mamba2-sp", "mamba2"), ("mamba2-sp-hf", "hf-mamba2")):
        exps = original_exponents(load_base(base))
        sp = load_preset(preset)
        for role in sp.roles:
            assert sp.scaling(role, "euler").init == exps[role], (preset, role)
    assert original_exponents(load_base("mamba2"))[Role.IN_PROJ_B].n_u == -0.5  # fan-in d_model
    assert original_exponents(load_base("hf-mamba2"))[Role.IN_PROJ_B].n_u == 0  # N(0, 0.1²) at every width


def test_the_mup_heuristic_gives_every_in_proj_block_and_out_proj_lr_over_width_under_adam():
    preset = load_preset("mamba2-mup")
    lrs = {}
    for d_model in (32, 128):  # N_u = 64 (the base) and 256
        cfg = cfg_at(d_model)
        lrs[d_model] = {(r.role, r.layer): r.lr for r in plan(Mamba2LM(cfg), cfg, preset, "adam", 1e-3)}
    for (role, layer), lr in lrs[128].items():
        base_lr = lrs[32][(role, layer)]
        assert base_lr == pytest.approx(1e-3) or role == Role.READOUT
        hidden = role in {Role.IN_PROJ_Z, Role.IN_PROJ_X, Role.IN_PROJ_B, Role.IN_PROJ_C, Role.IN_PROJ_DT,
                          Role.OUT_PROJ}
        if role != Role.READOUT:
            assert lr == pytest.approx(1e-3 / 4 if hidden else 1e-3), role


def test_a_preset_of_the_other_family_is_one_line_config_error():
    cfg2 = cfg_at(32)
    with pytest.raises(ConfigError, match="preset sp is for family mamba, the model is mamba2") as err:
        apply_preset(Mamba2LM(cfg2), cfg2, load_preset("sp"), "adam", 1e-3)
    assert "\n" not in str(err.value)
    cfg1 = MambaConfig(d_model=16, d_state=8)
    with pytest.raises(ConfigError, match="preset mamba2-sp is for family mamba2, the model is mamba"):
        plan(MambaLM(cfg1), cfg1, load_preset("mamba2-sp"), "adam", 1e-3)
    with pytest.raises(ConfigError, match="init base mamba is for family mamba"):
        plan(Mamba2LM(cfg2), cfg2, load_preset("mamba2-sp"), "adam", 1e-3, base="mamba")


def test_a_mamba2_preset_file_on_a_mamba_base_or_with_s6_roles_is_refused(tmp_path):
    import tomllib

    from ssmscope.ssm.presets import parse_preset

    text = (Path(presets_module.__file__).parent / "presets" / "mamba2-sp.toml").read_text()
    data = tomllib.loads(text.replace('base = "mamba2"', 'base = "mamba"'))
    with pytest.raises(ConfigError, match=r"initialises family mamba, the preset is for family mamba2"):
        parse_preset(data, "x.toml")
    data = tomllib.loads(text)
    data["roles"]["x_proj_B"] = data["roles"].pop("in_proj_B")
    with pytest.raises(ConfigError, match=r"roles\.x_proj_B: unknown role for family mamba2"):
        parse_preset(data, "x.toml")
    data = tomllib.loads(text)
    data["preset"]["family"] = "mamba3"
    with pytest.raises(ConfigError, match=r"preset\.family='mamba3'; allowed: mamba, mamba2"):
        parse_preset(data, "x.toml")


def test_a_tied_readout_follows_the_base_and_the_config_overrides_it():
    cfg = cfg_at(32)
    model = Mamba2LM(cfg)
    apply_preset(model, cfg, load_preset("mamba2-sp-hf"), "adam", 1e-3)
    assert not model.readout_tied
    apply_preset(model, cfg, load_preset("mamba2-sp"), "adam", 1e-3)
    assert model.readout_tied
    untied = cfg_at(32, tie_readout=False)
    m2 = Mamba2LM(untied)
    rows = plan(m2, untied, load_preset("mamba2-sp"), "adam", 1e-3)
    assert {r.init_kind for r in rows if r.role == Role.READOUT} == {InitKind.UNIFORM}


def test_sp_keeps_a_tied_readout_without_multiplier_at_every_width():
    """SP is the original at every width: a tied readout is the embedding's matrix, multiplier 1 (not the
    N_u^-1/2 the untied readout's init law would derive)."""
    for name in ("mamba2-sp", "mamba2-sp-hf"):
        cfg = cfg_at(128, tie_readout=True)
        rows = [r for r in plan(Mamba2LM(cfg), cfg, load_preset(name), "adam", 1e-3) if r.role == Role.READOUT]
        assert [(r.init_kind, r.multiplier) for r in rows] == [(InitKind.TIED, 1.0)], name
