"""A short end-to-end run: every preset at two widths, a few Adam steps on CPU.

Shows the parameterization table at the larger width and the losses; a first check that the
package installed and the model trains. (`make demo` runs the smoke sweep once that lands.)
"""

from __future__ import annotations

import time

import torch
from rich.console import Console
from rich.table import Table

from ssm import MambaConfig, MambaLM, apply_preset, build_optimizer, load_preset, plan


def train_briefly(preset: str, d_model: int, steps: int = 8, lr: float = 3e-3) -> list[float]:
    """Losses of `steps` Adam steps on one fixed random byte batch."""
    torch.manual_seed(0)
    cfg = MambaConfig(d_model=d_model, d_state=2 * d_model, n_layers=3)
    model = MambaLM(cfg)
    opt = build_optimizer(apply_preset(model, cfg, load_preset(preset), "adam", lr), "adam")
    ids = torch.randint(0, cfg.vocab_size, (4, 65), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(steps):
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg.vocab_size), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def main() -> None:
    console = Console(width=140)
    widths = (16, 64)
    cfg = MambaConfig(d_model=widths[-1], d_state=2 * widths[-1])
    table = Table(title=f"learning rate and init std per role at N_u = N_x = {cfg.d_inner} (base 32), Adam")
    table.add_column("role")
    names = ("sp", "mup", "mup-ssm")
    for name in names:
        table.add_column(f"{name} std")
        table.add_column(f"{name} lr")
    rows: dict[str, list[str]] = {}
    for name in names:
        for r in plan(MambaLM(cfg), cfg, load_preset(name), "adam", 1e-3):
            cells = rows.setdefault(str(r.role), [])
            if len(cells) < 2 * (names.index(name) + 1):
                std = "structural" if r.init_scale is None else f"{r.init_scale:.3g}"
                cells += [std, f"{r.lr:.3g}"]
    for role, cells in rows.items():
        table.add_row(role, *cells)
    console.print(table)
    for name in names:
        for d in widths:
            t0 = time.perf_counter()
            losses = train_briefly(name, d)
            console.print(f"{name:8s} N_u=N_x={2 * d:4d}  loss {losses[0]:.3f} → {losses[-1]:.3f}"
                          f"  ({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
