"""Probes record what they claim and leave the model's numbers untouched."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssmscope.probes import Observer
from ssmscope.ssm import MambaConfig, MambaLM, apply_preset, build_optimizer, load_preset
from ssmscope.ssm.scan.reference import state_sequence


def _model(scan: str, disc: str = "zoh", dtype=torch.float64, preset: str = "mup-ssm"):
    cfg = MambaConfig(d_model=8, d_state=6, n_layers=2, vocab_size=32, scan=scan, discretization=disc)
    model = MambaLM(cfg)
    groups = apply_preset(model, cfg, load_preset(preset), "adam", 1e-2, seed=3)
    model.to(dtype)
    ids = torch.randint(0, 32, (2, 13), generator=torch.Generator().manual_seed(0))
    return model, build_optimizer(groups, "adam"), ids


def _loss(model, ids):
    logits = model(ids[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def _by(records, **key):
    out = [r for r in records if all(r[k] == v for k, v in key.items())]
    assert len(out) == 1, (key, len(out))
    return out[0]


@pytest.mark.parametrize("scan", ["reference", "fast", "compiled"])
@pytest.mark.parametrize("disc", ["zoh", "euler"])
def test_state_probe_equals_norms_of_reference_states(scan, disc):
    model, _, ids = _model(scan, disc)
    captured = {}
    with Observer(model) as obs:
        obs.arm(0)
        _loss(model, ids).backward()
        for layer, mixer in enumerate(model.mixers):
            captured[layer] = mixer.probe.inputs
        records = obs.collect()
    for layer, inputs in captured.items():
        xs = torch.stack(state_sequence(inputs), dim=1)  # (B, L, ED, N) by the reference loop
        rec = _by(records, step=0, layer=layer, site="x", quantity="value")
        assert rec["sumsq"] == pytest.approx(xs.square().sum().item(), rel=1e-10)
        assert rec["count"] == xs.numel()
        assert rec["maxabs"] == pytest.approx(xs.abs().max().item(), rel=1e-10)
        per_channel = xs.square().sum(-1).sqrt()  # ‖x^(i)‖₂ per (b, t, i)
        assert rec["channel_norm_sum"] == pytest.approx(per_channel.sum().item(), rel=1e-10)
        per_token = xs.square().sum((-1, -2)).sqrt()
        assert rec["token_norm_sum"] == pytest.approx(per_token.sum().item(), rel=1e-10)
        assert rec["n_tokens"] == per_token.numel()


def test_deltas_are_zero_at_init_and_positive_after_a_step():
    model, opt, ids = _model("fast")
    with Observer(model, state_prev=True) as obs:
        for step in range(3):
            obs.arm(step)
            loss = _loss(model, ids)
            opt.zero_grad()
            loss.backward()
            records = obs.collect()
            for site in ("x", "y", "cx", "block_out"):
                for q in ("delta_init", "delta_prev"):
                    rec = _by(records, step=step, layer=1, site=site, quantity=q)
                    assert (rec["sumsq"] == 0) if step == 0 else (rec["sumsq"] > 0), (site, q, step)
            opt.step()
    params = [r for r in records if r["site"] == "param" and r["quantity"] == "delta_init"]
    assert all(r["sumsq"] > 0 for r in params)


def test_delta_x_matches_explicit_state_difference():
    model, opt, ids = _model("fast")
    with Observer(model) as obs:
        obs.arm(0)
        _loss(model, ids).backward()
        init_inputs = model.mixers[0].probe.inputs
        obs.collect()
        opt.step()
        opt.zero_grad()
        obs.arm(1)
        _loss(model, ids).backward()
        now_inputs = model.mixers[0].probe.inputs
        records = obs.collect()
    diff = torch.stack(state_sequence(now_inputs), 1) - torch.stack(state_sequence(init_inputs), 1)
    rec = _by(records, step=1, layer=0, site="x", quantity="delta_init")
    assert rec["sumsq"] == pytest.approx(diff.square().sum().item(), rel=1e-9)


def test_gradient_probes_equal_autograd():
    model, _, ids = _model("fast")
    ys = {}

    def keep(module, args, out):
        out.retain_grad()
        ys[id(module)] = out

    handles = [m.ssm_output.register_forward_hook(keep) for m in model.mixers]
    with Observer(model) as obs:
        obs.arm(0)
        _loss(model, ids).backward()
        records = obs.collect()
    for h in handles:
        h.remove()
    for layer, mixer in enumerate(model.mixers):
        g = ys[id(mixer.ssm_output)].grad
        rec = _by(records, step=0, layer=layer, site="grad_y", quantity="value")
        assert rec["sumsq"] == pytest.approx(g.square().sum().item(), rel=1e-10)
        assert rec["sumsq"] > 0


@pytest.mark.parametrize("scan", ["reference", "fast", "compiled"])
def test_observer_leaves_outputs_and_gradients_bit_identical(scan):
    model, _, ids = _model(scan, dtype=torch.float32)
    loss = _loss(model, ids)
    loss.backward()
    plain_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with Observer(model) as obs:
        obs.arm(0)
        probed = _loss(model, ids)
        probed.backward()
        obs.collect()
    assert torch.equal(probed, loss)
    for a, p in zip(plain_grads, model.parameters(), strict=True):
        assert torch.equal(a, p.grad)


def test_state_delta_prev_is_recorded_only_when_asked():
    model, opt, ids = _model("fast")
    with Observer(model) as obs:
        for step in range(2):
            obs.arm(step)
            _loss(model, ids).backward()
            records = obs.collect()
            opt.step()
    assert not [r for r in records if r["site"] == "x" and r["quantity"] == "delta_prev"]
    assert _by(records, step=1, layer=0, site="y", quantity="delta_prev")["sumsq"] > 0


def test_observer_detaches_cleanly():
    model, _, ids = _model("fast")
    n_hooks = sum(len(m._forward_hooks) for m in model.modules())
    with Observer(model) as obs:
        assert sum(len(m._forward_hooks) for m in model.modules()) > n_hooks
        obs.arm(0)
        _loss(model, ids).backward()
        obs.collect()
    assert sum(len(m._forward_hooks) for m in model.modules()) == n_hooks
    assert all(m.probe is None for m in model.mixers)


def test_group_update_probe_moves_one_group_at_a_time():
    model, opt, ids = _model("fast")
    with Observer(model) as obs:
        obs.arm(0)
        loss = _loss(model, ids)
        loss.backward()
        obs.collect()
        opt.step()
        records = obs.group_update_records(1, ids[:, :-1])
    groups = {r["group"] for r in records}
    assert groups == {"W_B", "W_C", "dt_path", "A_log", "upstream"}
    for g in groups:
        rec = _by(records, layer=1, site="y", group=g)
        assert math.isfinite(rec["sumsq"]) and rec["sumsq"] > 0, g
    # moving only W_C leaves the state untouched in the first layer (x does not depend on W_C)
    moved_b = _by(records, layer=0, site="x", group="W_B")["sumsq"]
    assert _by(records, layer=0, site="x", group="W_C")["sumsq"] < 1e-20 * moved_b
    assert moved_b > 0


def test_a_record_is_finite_only_within_float32_range():
    """Divergence detection: a raw sum that a float32 cannot hold counts as overflowed (as before)."""
    from ssmscope.probes.stats import is_finite_record

    big = float(torch.finfo(torch.float32).max)
    for value, finite in ((0.0, True), (big, True), (-1e38, True), (1e39, False), (float("inf"), False),
                          (float("nan"), False), (1e300, False)):
        assert is_finite_record({"sumsq": value, "maxabs": 1.0}) is finite, value
        assert is_finite_record({"sumsq": 1.0, "maxabs": value}) is finite, value
