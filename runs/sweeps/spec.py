"""Sweep specs (TOML) and the run configs they expand to.

A spec is a grid: widths (joint N_u = N_x, or separate N_u and N_x lists) × presets ×
discretisations × optimizers × learning rates × seeds (× init bases, default each preset's own),
with one training recipe. The recipe names the model family (`train.model`: "mamba", S6, the default; or
"mamba2", SSD) and, for Mamba-2, how a width N_u = d_inner = nheads × headdim is made: more heads of a fixed
`headdim` (the default), or wider heads of a fixed `nheads` (when `nheads` is set). Every
value is validated at load time; errors name the TOML key, the value and what is allowed.
Imports only the standard library, ssm and runs.sweeps.ids (the worker path runs on bare GPU nodes).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ssmscope.runs.sweeps.ids import run_id_of
from ssmscope.ssm.bases import LEGACY_BASE, builtin_base_names, load_base
from ssmscope.ssm.config import Discretization, MambaConfig, Optimizer, Readout
from ssmscope.ssm.errors import ConfigError
from ssmscope.ssm.presets import builtin_names, preset_base_name, preset_family, preset_readout
from ssmscope.ssm.roles import Family
from ssmscope.ssm.tomlfiles import builtin_toml_names, read_builtin_or_file

if TYPE_CHECKING:
    from ssmscope.ssm.mamba2 import Mamba2Config

TASKS = ("pydoc", "copy")
INT64_MAX = 2**63 - 1
"""The largest integer the store's BIGINT columns hold: every integer of a spec is at most this."""
SEED_MAX = INT64_MAX
"""Seeds are 0 … 2^63 − 1: numpy's generators refuse negative seeds, and the store keeps a seed as a BIGINT
(torch.manual_seed takes up to 2^64 − 1, so it is not the limit)."""

HASH_OMITTED_DEFAULTS: dict[str, Any] = {"base": LEGACY_BASE, "param_every": 1, "readout": Readout.BASE.value,
                                         "readout_probes": False, "model": Family.MAMBA.value, "headdim": 16,
                                         "nheads": 0, "ngroups": 1, "chunk_size": 64, "norm": "group"}
"""Fields newer than some stored runs, and the value those runs had: left out of run ids at that value."""


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything that determines one training run's numbers (its id is a hash of these)."""

    preset: str
    """Built-in preset name or path of a preset TOML."""
    discretization: str
    optimizer: str
    lr: float
    """Base learning rate (at the preset's base width)."""
    seed: int
    n_u: int
    """N_u = d_inner; d_model = n_u / expand."""
    n_x: int
    """N_x = d_state."""
    n_layers: int = 3
    expand: int = 2
    steps: int = 10
    """Optimizer steps; probes at step s see the model after s updates."""
    log_every: int = 1
    batch: int = 8
    seq_len: int = 64
    task: str = "pydoc"
    fixed_batch: bool = True
    """Train on one fixed batch and probe that batch (mup-style coordinate check)."""
    dt_min: float = 1e-3
    dt_max: float = 0.1
    weight_decay: float = 0.0
    eval_every: int = 0
    """Held-out loss every this many steps (0: never)."""
    eval_batches: int = 4
    grads: bool = True
    """Record ∂L/∂y and ∂L/∂x."""
    group_probes: bool = False
    """Per-parameter-group update probes (one extra forward per group per logged step)."""
    state_delta_prev: bool = False
    """Also Δx against the previous logged step (one more state recurrence per layer and logged step)."""
    param_every: int = 1
    """Parameter records (‖W‖, ‖W − W₀‖ per parameter) on every k-th logged step, the first one always;
    1 = every logged step. About a third of the Observer's own cost per logged step at width 256
    (bench/RESULTS_CPU.md); a long run with many logged steps can thin them."""
    base: str = LEGACY_BASE
    """Init base (ssm.bases): a built-in name or a base TOML path. Spec expansion fills in the
    preset's own base; the default is the constants every run used before bases existed, so a
    config stored without this key (an old run) still means, and reproduces, what it ran."""
    readout: str = Readout.BASE.value
    """How the readout is treated (ssm.config.Readout): as the base says, tied, untied or untied-zero."""
    readout_probes: bool = False
    """Record the logits and the split of the embedding/readout gradient (probes.observer, readout probes)."""
    model: str = Family.MAMBA.value
    """The model family (ssm.roles.Family): "mamba" (S6, ssm.model.MambaLM) or "mamba2" (SSD, ssm.mamba2.Mamba2LM)."""
    headdim: int = 16
    """Mamba-2: the head dimension P when widths add heads (nheads = 0)."""
    nheads: int = 0
    """Mamba-2: a fixed number of heads, widths widening each head (headdim = N_u / nheads); 0: add heads."""
    ngroups: int = 1
    """Mamba-2: groups of heads sharing B and C (fixed across widths)."""
    chunk_size: int = 64
    """Mamba-2: the chunked SSD scan's chunk length (a performance choice: the numbers agree to fp tolerance)."""
    norm: str = "group"
    """Mamba-2: the gated RMSNorm per group (state-spaces/mamba) or over the whole d_inner ("full")."""

    @property
    def d_model(self) -> int:
        return self.n_u // self.expand

    def model_config(self, scan: str = "auto") -> MambaConfig | Mamba2Config:
        readout = Readout(self.readout)
        if self.model == Family.MAMBA2:
            from ssmscope.ssm.mamba2 import Mamba2Config  # torch: only where a model is built

            headdim = self.n_u // self.nheads if self.nheads else self.headdim
            return Mamba2Config(d_model=self.d_model, d_state=self.n_x, n_layers=self.n_layers, vocab_size=256,
                                expand=self.expand, headdim=headdim, ngroups=self.ngroups, dt_min=self.dt_min,
                                dt_max=self.dt_max, norm=self.norm, chunk_size=self.chunk_size,
                                tie_readout=readout.tie, zero_readout=readout.zero)
        return MambaConfig(d_model=self.d_model, d_state=self.n_x, n_layers=self.n_layers,
                           expand=self.expand, dt_min=self.dt_min, dt_max=self.dt_max,
                           discretization=self.discretization, vocab_size=256, scan=scan,
                           tie_readout=readout.tie, zero_readout=readout.zero)

    @property
    def run_id(self) -> str:
        """16 hex digits of the SHA-256 of the canonical JSON of this config.

        Fields added after runs were stored (HASH_OMITTED_DEFAULTS) are left out of the hash at the value
        every older run had, so runs made before them keep their ids: the legacy base (any other base, sp on
        `mamba` included, gives a different id), parameter records on every logged step.
        """
        d = asdict(self)
        for key, value in HASH_OMITTED_DEFAULTS.items():
            if d[key] == value:
                del d[key]
        return run_id_of(d)

    def to_dict(self) -> dict[str, Any]:
        """Every field, the resolved base included (stored as the run's config_json)."""
        return asdict(self)


_RECIPE_KEYS = {f.name for f in fields(RunConfig)} - {
    "preset", "discretization", "optimizer", "lr", "seed", "n_u", "n_x", "base", "readout"}
_MAMBA2_KEYS = ("headdim", "nheads", "ngroups", "chunk_size", "norm")
_CHOICES: dict[str, tuple[str, ...]] = {"task": TASKS, "model": tuple(f.value for f in Family),
                                        "norm": ("group", "full")}
_GRID_KEYS = {"widths", "n_u", "n_x", "presets", "bases", "readouts", "discretizations", "optimizers", "lrs",
              "seeds"}


@dataclass(frozen=True)
class SweepSpec:
    name: str
    description: str
    runs: tuple[RunConfig, ...]
    source: str

    @property
    def n_runs(self) -> int:
        return len(self.runs)


def _list(path: str, value: Any, kind: type, *, positive: bool = False, allowed=None) -> list:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{path}={value!r}; allowed: a non-empty list")
    out = []
    for i, v in enumerate(value):
        ok = isinstance(v, kind) and not isinstance(v, bool) if kind is not bool else isinstance(v, bool)
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            v, ok = float(v), True
        if not ok:
            raise ConfigError(f"{path}[{i}]={v!r}; allowed: {kind.__name__}")
        if kind is float and not math.isfinite(v):
            raise ConfigError(f"{path}[{i}]={v!r}; allowed: a finite number")
        if positive and v <= 0:
            raise ConfigError(f"{path}[{i}]={v!r}; allowed: > 0")
        if allowed is not None and v not in allowed:
            raise ConfigError(f"{path}[{i}]={v!r}; allowed: {', '.join(map(str, allowed))}")
        out.append(v)
    return out


def _recipe(path: str, table: Any) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}={table!r}; allowed: a table")
    types = {f.name: f.type for f in fields(RunConfig)}
    out = {}
    for key, v in table.items():
        if key not in _RECIPE_KEYS:
            raise ConfigError(f"{path}.{key}: unknown key; allowed: {', '.join(sorted(_RECIPE_KEYS))}")
        t = types[key]
        if t == "bool":
            if not isinstance(v, bool):
                raise ConfigError(f"{path}.{key}={v!r}; allowed: true or false")
        elif t == "int":
            if (isinstance(v, bool) or not isinstance(v, int) or (v <= 0 and key not in ("eval_every", "nheads"))
                    or v < 0
                    or v > INT64_MAX):
                raise ConfigError(f"{path}.{key}={v!r}; allowed: a positive integer (at most 2^63 - 1)")
        elif t == "float":
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"{path}.{key}={v!r}; allowed: a finite non-negative number")
            v = float(v)
        elif key in _CHOICES and v not in _CHOICES[key]:
            raise ConfigError(f"{path}.{key}={v!r}; allowed: {', '.join(_CHOICES[key])}")
        out[key] = v
    if "headdim" in out and out.get("nheads", 0):
        raise ConfigError(f"{path}.headdim: give headdim (widths add heads) or nheads (widths widen heads), not both")
    if out.get("model", Family.MAMBA) == Family.MAMBA:
        stray = sorted(set(out) & set(_MAMBA2_KEYS))
        if stray:
            raise ConfigError(f"{path}.{stray[0]}: a Mamba-2 key; set {path}.model = \"mamba2\" to use it")
    if out.get("dt_min", 1e-3) <= 0 or out.get("dt_min", 1e-3) > out.get("dt_max", 0.1):
        raise ConfigError(f"{path}.dt_min/dt_max: allowed 0 < dt_min <= dt_max")
    return out


def _bases(value: Any, presets: list[str]) -> dict[str, list[str]]:
    """Init bases per preset: grid.bases for every preset if given, else each preset's own base."""
    if value is None:
        return {p: [preset_base_name(p)] for p in presets}
    names = _list("grid.bases", value, str)
    for i, b in enumerate(names):
        if b not in builtin_base_names() and not b.endswith(".toml"):
            raise ConfigError(f"grid.bases[{i}]={b!r}; allowed: {', '.join(builtin_base_names())} or a .toml path")
        try:
            load_base(b)
        except ConfigError as exc:
            raise ConfigError(f"grid.bases[{i}]: {exc}") from None
    return {p: names for p in presets}


def _readouts(value: Any, presets: list[str]) -> dict[str, list[str]]:
    """Readout treatments per preset: grid.readouts for every preset if given, else each preset's own ([preset]
    readout: `base` unless the preset names one — then its runs say so in their config, and get ids of their own)."""
    if value is None:
        return {p: [preset_readout(p).value] for p in presets}
    names = _list("grid.readouts", value, str, allowed=[r.value for r in Readout])
    return dict.fromkeys(presets, names)


def parse_spec(data: dict[str, Any], source: str) -> SweepSpec:
    """Validate a sweep spec table and expand its grid into run configs."""
    unknown = set(data) - {"sweep", "grid", "train"}
    if unknown:
        raise ConfigError(f"{sorted(unknown)[0]}: unknown table; allowed: sweep, grid, train")
    head = data.get("sweep", {})
    if not isinstance(head, dict) or set(head) - {"name", "description"}:
        raise ConfigError("sweep: allowed keys: name, description")
    name = head.get("name", Path(source).stem)
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"sweep.name={name!r}; allowed: a non-empty string (runs store it as their spec)")
    if not isinstance(head.get("description", ""), str):
        raise ConfigError(f"sweep.description={head['description']!r}; allowed: a string")
    grid = data.get("grid")
    if not isinstance(grid, dict):
        raise ConfigError("grid: missing table [grid]")
    for key in grid:
        if key not in _GRID_KEYS:
            raise ConfigError(f"grid.{key}: unknown key; allowed: {', '.join(sorted(_GRID_KEYS))}")
    if "widths" in grid and ("n_u" in grid or "n_x" in grid):
        raise ConfigError("grid.widths: give either widths (joint N_u = N_x) or n_u and n_x, not both")
    if "widths" in grid:
        w = _list("grid.widths", grid["widths"], int, positive=True)
        shapes = [(v, v) for v in w]
    elif "n_u" in grid and "n_x" in grid:
        nu = _list("grid.n_u", grid["n_u"], int, positive=True)
        nx = _list("grid.n_x", grid["n_x"], int, positive=True)
        shapes = list(itertools.product(nu, nx))
    else:
        raise ConfigError("grid.widths: missing; give widths (joint) or both n_u and n_x")
    recipe = _recipe("train", data.get("train", {}))
    family = Family(recipe.get("model", Family.MAMBA))
    presets = _list("grid.presets", grid.get("presets"), str)
    for i, p in enumerate(presets):
        if p not in builtin_names() and not p.endswith(".toml"):
            own = ", ".join(builtin_names(family))
            raise ConfigError(f"grid.presets[{i}]={p!r}; allowed: {own} or a .toml path")
        if p not in builtin_names() and not Path(p).is_file():
            raise ConfigError(f"grid.presets[{i}]={p!r}: no such file (a relative path is read from {Path.cwd()})")
        if preset_family(p) != family:
            raise ConfigError(f"grid.presets[{i}]={p!r} is a {preset_family(p)} preset and train.model is {family}; "
                              f"allowed: {', '.join(builtin_names(family))} or a {family} preset file")
    bases = _bases(grid.get("bases"), presets)
    default_discs = ["zoh", "euler"] if family == Family.MAMBA else [Discretization.EULER.value]
    discs = _list("grid.discretizations", grid.get("discretizations", default_discs), str,
                  allowed=[d.value for d in Discretization])
    if family == Family.MAMBA2 and discs != [Discretization.EULER.value]:
        raise ConfigError(f"grid.discretizations={discs!r}: Mamba-2's SSD has one discretisation (exp(Δ·a), Δ·B), "
                          "which ssmscope calls euler; allowed: [\"euler\"] or leave it out")
    opts = _list("grid.optimizers", grid.get("optimizers", ["adam"]), str,
                 allowed=[o.value for o in Optimizer])
    lrs = _list("grid.lrs", grid.get("lrs"), float, positive=True)
    readouts = _readouts(grid.get("readouts"), presets)
    seeds = _list("grid.seeds", grid.get("seeds", [0]), int)
    for i, seed in enumerate(seeds):
        if not 0 <= seed <= SEED_MAX:
            raise ConfigError(f"grid.seeds[{i}]={seed}; allowed: an integer from 0 to 2^63 - 1 ({SEED_MAX})")
    expand = recipe.get("expand", 2)
    for n_u, _ in shapes:
        if n_u % expand:
            raise ConfigError(f"grid: N_u={n_u} is not a multiple of train.expand={expand}")
        if family == Family.MAMBA2:
            _check_heads(n_u, recipe)
    runs = tuple(
        RunConfig(preset=p, discretization=d, optimizer=o, lr=lr, seed=s, n_u=n_u, n_x=n_x, base=b, readout=r,
                  **recipe)
        for (n_u, n_x), p, d, o, lr, s in itertools.product(shapes, presets, discs, opts, lrs, seeds)
        for b in bases[p] for r in readouts[p]
    )
    return SweepSpec(name=name, description=head.get("description", ""), runs=runs, source=source)


def _check_heads(n_u: int, recipe: dict[str, Any]) -> None:
    """A Mamba-2 width N_u must split into whole heads, and its heads into the groups (one-line errors)."""
    nheads, headdim, ngroups = recipe.get("nheads", 0), recipe.get("headdim", 16), recipe.get("ngroups", 1)
    if nheads:
        if n_u % nheads:
            raise ConfigError(f"grid: N_u={n_u} is not a multiple of train.nheads={nheads} (widths widen the heads)")
        heads = nheads
    else:
        if n_u % headdim:
            raise ConfigError(f"grid: N_u={n_u} is not a multiple of train.headdim={headdim} (widths add heads)")
        heads = n_u // headdim
    if heads % ngroups:
        raise ConfigError(f"grid: N_u={n_u} gives {heads} heads, not a multiple of train.ngroups={ngroups}")


def builtin_specs() -> list[str]:
    return builtin_toml_names("ssmscope.runs.sweeps", "specs")


def load_spec(name_or_path: str | Path) -> SweepSpec:
    """A built-in spec by name or a spec TOML file."""
    data, source = read_builtin_or_file("ssmscope.runs.sweeps", "specs", "spec", name_or_path)
    return parse_spec(data, source)
