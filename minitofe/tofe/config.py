"""``ToFeConfig``: every ToFe hyper-parameter, each a documented default (DESIGN.md marks the ones that
are minitofe's own choice, not the paper's, with [ours]).

Methods (DESIGN.md "Baselines"), selected by name:
    dense          no reduction
    evit           top-K patches by class-token attention, the rest dropped for good (no reuse)
    dynamicvit     learned selector, cumulative mask (a dropped token never returns), no approximator
    idle           class-token-attention top-K per stage, frozen tokens carried unchanged, reused later
    tofe           learned selector, freeze + reuse, MLP approximator, budget loss
    tofe-identity  as tofe with the identity approximator (ablation)
    tofe-uniform   as tofe with fixed equal keep ratios instead of learned ones (ablation)
"""
import numbers
from dataclasses import asdict, dataclass, fields, replace

METHODS = ("dense", "evit", "dynamicvit", "idle", "tofe", "tofe-identity", "tofe-uniform")


def default_stages(depth):
    """Stage starts for a given depth: 3, 6, 9 for depth 12 [ours], i.e. round(depth * k / 4)."""
    return tuple(int(round(depth * k / 4)) for k in (1, 2, 3))


NUMBER_FIELDS = ("threshold", "tau", "alpha", "kd_temperature", "beta", "lam", "target_ratio", "label_smoothing")


def is_sequence(value):
    """A tuple, list or 1-d array of values; not a bare number, a string or a dict."""
    return hasattr(value, "__len__") and not isinstance(value, (str, bytes, dict))


def _sequence(name, value):
    """A sequence (``is_sequence``) -> tuple; anything else is a TypeError."""
    if not is_sequence(value):
        raise TypeError(f"ToFeConfig: {name} must be a tuple, got {type(value).__name__} {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class ToFeConfig:
    method: str = "tofe"
    stages: tuple = None              # block index where each stage starts; None -> default_stages(depth)
    keep_ratios: tuple = (0.49, 0.25, 0.14)  # rho_i for `topk` inference / fixed ratios [ours: paper's learned]
    inference: str = "topk"           # "topk" (same K per image) or "threshold" (keep_prob > threshold)
    threshold: float = 0.5
    approx_reduction: int = 4         # r: approximator bottleneck C -> C / r [ours]
    tau: float = 1.0                  # Gumbel-Softmax temperature
    tau_end: float = None             # if set, anneal tau -> tau_end over training (see gumbel.tau_at)
    tau_schedule: str = "cosine"      # "linear" | "cosine" | "exponential" when tau_end is set
    alpha: float = 0.5                # weight of L_kd [ours, DynamicViT's value]
    kd_temperature: float = 1.0       # T in T^2 KL(teacher || student)
    beta: float = 1.0                 # weight of L_approx [ours]
    lam: float = 2.0                  # lambda of L_flops [ours]
    target_ratio: float = 0.5         # gamma: target MACs / dense MACs
    per_image_budget: bool = False    # L_flops on each image's ratio, then averaged
    label_smoothing: float = 0.0

    def __post_init__(self):
        def bad(msg):
            raise ValueError(f"ToFeConfig: {msg}")
        if self.method not in METHODS:
            bad(f"unknown method {self.method!r}; choose one of {list(METHODS)}")
        for name in NUMBER_FIELDS + (("tau_end",) if self.tau_end is not None else ()):
            v = getattr(self, name)
            if not isinstance(v, numbers.Real) or isinstance(v, bool):
                raise TypeError(f"ToFeConfig: {name} must be a number, got {v!r}")
        if self.stages is not None:
            st = _sequence("stages", self.stages)
            if len(st) == 0 or any(not isinstance(s, int) or isinstance(s, bool) for s in st):
                bad(f"stages must be a non-empty tuple of ints, got {self.stages!r}")
            if any(b <= a for a, b in zip(st, st[1:])):
                bad(f"stages must be strictly increasing (sorted, no repeats), got {st}")
            if st[0] < 0:
                bad(f"stages must be >= 0, got {st}")
            object.__setattr__(self, "stages", st)
        kr = _sequence("keep_ratios", self.keep_ratios)
        if any(not isinstance(r, numbers.Real) or isinstance(r, bool) for r in kr):
            raise TypeError(f"ToFeConfig: keep_ratios must be numbers, got {self.keep_ratios!r}")
        kr = tuple(float(r) for r in kr)
        if any(not (0.0 < r <= 1.0) for r in kr):
            bad(f"keep_ratios must lie in (0, 1], got {kr}")
        object.__setattr__(self, "keep_ratios", kr)
        if self.inference not in ("topk", "threshold"):
            bad(f"inference must be 'topk' or 'threshold', got {self.inference!r}")
        if not 0.0 < self.threshold < 1.0:
            bad(f"threshold must lie in (0, 1), got {self.threshold}")
        if not (isinstance(self.approx_reduction, int) and self.approx_reduction >= 1):
            bad(f"approx_reduction must be an int >= 1, got {self.approx_reduction!r}")
        if not self.tau > 0 or (self.tau_end is not None and not self.tau_end > 0):
            bad(f"tau and tau_end must be > 0, got tau={self.tau}, tau_end={self.tau_end}")
        if self.tau_schedule not in ("linear", "cosine", "exponential"):
            bad(f"tau_schedule must be 'linear', 'cosine' or 'exponential', got {self.tau_schedule!r}")
        if not 0.0 < self.target_ratio <= 1.0:
            bad(f"target_ratio must lie in (0, 1], got {self.target_ratio}")
        for name in ("alpha", "beta", "lam", "kd_temperature"):
            if not getattr(self, name) >= 0:
                bad(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.kd_temperature > 0:
            bad(f"kd_temperature must be > 0, got {self.kd_temperature}")
        if not 0.0 <= self.label_smoothing < 1.0:
            bad(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")

    def resolved_stages(self, depth):
        """The stage starts for a backbone of ``depth`` blocks, checked against it."""
        st = self.stages if self.stages is not None else default_stages(depth)
        if st[-1] >= depth:
            raise ValueError(f"ToFeConfig: stages {st} reach beyond the depth {depth} (need < {depth})")
        if len(self.keep_ratios) != len(st):
            raise ValueError(f"ToFeConfig: {len(st)} stages {st} but {len(self.keep_ratios)} keep_ratios "
                             f"{self.keep_ratios}")
        return st

    @property
    def learned_selector(self):
        return self.method in ("dynamicvit", "tofe", "tofe-identity", "tofe-uniform")

    @property
    def uses_approximator(self):
        return self.method in ("tofe", "tofe-uniform")

    @property
    def reuses_tokens(self):
        return self.method not in ("evit", "dynamicvit")

    def to_dict(self):
        d = asdict(self)
        d["stages"] = list(self.stages) if self.stages is not None else None
        d["keep_ratios"] = list(self.keep_ratios)
        return d

    @classmethod
    def from_dict(cls, d):
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"ToFeConfig: unknown field(s) {unknown}")
        d = dict(d)
        if d.get("stages") is not None:
            d["stages"] = tuple(d["stages"])
        return cls(**d)

    def replace(self, **changes):
        return replace(self, **changes)
