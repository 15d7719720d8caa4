"""The readout as data (tied, untied, untied and zero-initialised: grid.readouts, MambaConfig) and the readout
probes: the logits, and the embedding/readout gradient split by use, checked against autograd's own gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssmscope.probes import Observer
from ssmscope.runs.sweeps.spec import parse_spec
from ssmscope.ssm import MambaConfig, MambaLM, load_preset
from ssmscope.ssm.apply import apply_preset, plan
from ssmscope.ssm.config import Readout
from ssmscope.ssm.errors import ConfigError


def _model(tie: bool | None, zero: bool = False, preset: str = "mup") -> MambaLM:
    cfg = MambaConfig(d_model=32, d_state=8, n_layers=2, vocab_size=64, tie_readout=tie, zero_readout=zero,
                      scan="reference")
    model = MambaLM(cfg)
    apply_preset(model, cfg, load_preset(preset), "adam", 1e-2, seed=0)
    return model.double()


def _loss(model: MambaLM, ids: torch.Tensor) -> torch.Tensor:
    logits = model(ids[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


@pytest.mark.parametrize("tie", [True, False])
def test_the_gradient_split_adds_up_to_autograds_gradients(tie):
    model = _model(tie)
    ids = torch.randint(0, 64, (3, 9), generator=torch.Generator().manual_seed(1))
    with Observer(model, readout=True, params=False) as obs:
        obs.arm(0)
        model.zero_grad(set_to_none=True)
        _loss(model, ids).backward()
        split = obs._readout.gradient_split()
        records = obs.collect()
    assert model.readout_tied == tie
    assert (model.lm_head.multiplier == 0.5) == tie  # µP ties with logits × 1/m (m = 2 here); untied: its own init
    if tie:
        torch.testing.assert_close(split["shared"], model.embedding.weight.grad, rtol=1e-10, atol=1e-12)
        assert set(split) == {"input", "readout", "shared"}
    else:
        torch.testing.assert_close(split["input"], model.embedding.weight.grad, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(split["readout"], model.lm_head.weight.grad, rtol=1e-10, atol=1e-12)
        assert set(split) == {"input", "readout"}
    got = {r["group"]: r["sumsq"] for r in records if r["site"] == "readout_grad"}
    assert got == pytest.approx({g: float((v ** 2).sum()) for g, v in split.items()}, rel=1e-9)
    logits = [r for r in records if r["site"] == "logits"]
    assert {r["quantity"] for r in logits} == {"value", "delta_init", "delta_prev"}
    value = next(r for r in logits if r["quantity"] == "value")
    with torch.no_grad():
        expected = float((model(ids[:, :-1]) ** 2).sum())
    assert value["count"] == 3 * 8 * 64 and value["sumsq"] == pytest.approx(expected)


def test_zero_readout_starts_at_zero_with_the_presets_lr_and_refuses_a_tied_readout():
    model = _model(False, zero=True)
    assert float(model.lm_head.weight.detach().abs().max()) == 0.0
    cfg = MambaConfig(d_model=32, d_state=8, n_layers=2, vocab_size=64, tie_readout=False, zero_readout=True)
    row = next(r for r in plan(MambaLM(cfg), cfg, load_preset("mup"), "adam", 1e-2) if r.name == "lm_head.weight")
    assert (row.init_scale, row.init_rule) == (0.0, "0 (zero-initialised readout)")
    assert row.lr == pytest.approx(1e-2 * (64 / 32) ** -1)  # µP Adam: the readout's lr ∝ 1/N_u (N_u = 64, base 32)
    with pytest.raises(ConfigError, match="a zero readout needs tie_readout=False"):
        MambaConfig(d_model=32, d_state=8, tie_readout=True, zero_readout=True)


def test_grid_readouts_expand_runs_and_keep_old_run_ids():
    spec = {"sweep": {"name": "r"}, "grid": {"widths": [16], "presets": ["mup"], "lrs": [0.01],
                                             "discretizations": ["zoh"]},
            "train": {"steps": 1}}
    plain = parse_spec(spec, "r").runs
    both = parse_spec({**spec, "grid": {**spec["grid"], "readouts": ["tied", "untied", "untied-zero"]}}, "r").runs
    assert [r.readout for r in plain] == ["base"] and [r.readout for r in both] == ["tied", "untied", "untied-zero"]
    assert len({r.run_id for r in both} | {plain[0].run_id}) == 4  # each choice its own run; "base" keeps the old id
    assert [(c.tie_readout, c.zero_readout) for c in (r.model_config() for r in both)] == [
        (True, False), (False, False), (False, True)]
    assert [Readout(r.readout).tie for r in plain] == [None]
    with pytest.raises(ConfigError, match=r"grid\.readouts"):
        parse_spec({**spec, "grid": {**spec["grid"], "readouts": ["sideways"]}}, "r")
