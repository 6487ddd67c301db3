"""``ToFeConfig``: every ToFe hyper-parameter, each a documented default (docs/method.md marks the ones
that are minitofe's own choice, not the paper's, with [minitofe]).

The method is selected by name from the one registry of methods (``minitofe.methods``: ToFe, its
ablations and every baseline, each in its own module; docs/method.md, "Where each method lives"). What a
method is (has it a learned selector, an approximator, does it reuse tokens, train, need a teacher) is
the registry's to say: the properties below ask it. The EViT / DynamicViT fields are those baselines'
hyper-parameters, kept here so that every run, saved file and command line has one config.

Files written before ``evit`` / ``dynamicvit`` meant the authors' methods (their config has no
``evit_fuse`` field) load with the names the simplified methods have now (``LEGACY_NAMES``).
"""
import numbers
from dataclasses import asdict, dataclass, fields, replace

from .parts import APPROXIMATORS, SELECTORS
from ..registry import get, names

LEGACY_NAMES = {"evit": "evit-drop", "dynamicvit": "tofe-cumulative"}   # for configs saved before the rename


def method_of(name):
    """The registry's entry for ``name`` (``minitofe.registry``, filled by ``minitofe.methods``). Unknown
    names: ValueError listing the known ones."""
    return get(name)


def __getattr__(name):
    """``METHODS``: the names of the registered methods, in registration order (kept for its users)."""
    if name == "METHODS":
        return names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def default_stages(depth):
    """Stage starts for a given depth: 3, 6, 9 for depth 12 [ours], i.e. round(depth * k / 4)."""
    return tuple(int(round(depth * k / 4)) for k in (1, 2, 3))


NUMBER_FIELDS = ("threshold", "tau", "alpha", "kd_temperature", "beta", "lam", "target_ratio",
                 "label_smoothing", "evit_warmup", "evit_anneal", "dvit_ratio_weight", "dvit_kl_weight",
                 "dvit_token_weight")
LAST_STAGE = ("approximate", "drop")                     # what the last stage does with its frozen tokens
OPTIONAL_RATES = ("evit_keep_rate", "dvit_rho")          # None: chosen to meet target_ratio (tofe.budget)


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
    keep_ratios: tuple = (0.49, 0.25, 0.14)  # rho_i for `topk` / fixed ratios [ours: paper's learned]
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
    # EViT (method "evit"; the authors' DeiT recipe in brackets)
    evit_keep_rate: float = None      # kept fraction of the current patches per stage [0.7]; None: budget
    evit_fuse: bool = True            # fuse the inattentive tokens into one extra token [on]
    evit_warmup: float = 1 / 30       # fraction of training at keep rate 1 [10 of 300 epochs]
    evit_anneal: float = 1 / 3        # then cosine 1 -> evit_keep_rate over this fraction [100 of 300]
    # DynamicViT (method "dynamicvit")
    dvit_rho: float = None            # stage s keeps rho^(s+1) of the patches [0.7]; None: budget
    dvit_ratio_weight: float = 2.0    # ratio loss weight [2.0]
    dvit_kl_weight: float = 0.5       # KL to the teacher's logits [0.5]
    dvit_token_weight: float = 0.5    # MSE to the teacher's final tokens over the kept ones [0.5]
    # ToFe's parts (``tofe/parts.py``): files saved before these fields load with the defaults
    selector: str = "mlp"             # token selector kind: "mlp" (the paper's), "linear", "attention"
    approximator: str = "mlp"         # approximator kind: "mlp" (the paper's), "deep"
    # the last stage's frozen tokens: "approximate" (the paper's) or "drop": no approximator there [ours];
    # its output cannot reach a class-token head (kept queries attend only kept keys; a fused frozen
    # token is made from the stage's input)
    last_stage: str = "approximate"
    # [ours] the frozen patches fused into one extra token that joins the kept ones in each stage's blocks
    # (EViT's fusion on ToFe: ``tofe/fuse.py``); read by methods whose learned selector freezes and
    # reuses tokens (``fuses_frozen``), ignored by the others; files saved before it load with False
    fuse_frozen: bool = False

    def __post_init__(self):
        def bad(msg):
            raise ValueError(f"ToFeConfig: {msg}")
        method_of(self.method)                   # an unknown one: "unknown method ...; choose one of ..."
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
        self._check_baseline_fields(bad)
        for name, kinds in (("selector", SELECTORS), ("approximator", APPROXIMATORS),
                            ("last_stage", LAST_STAGE)):
            if getattr(self, name) not in kinds:
                bad(f"unknown {name} {getattr(self, name)!r}; choose one of {list(kinds)}")

    def _check_baseline_fields(self, bad):
        for name in OPTIONAL_RATES:
            v = getattr(self, name)
            if v is not None and (not isinstance(v, numbers.Real) or isinstance(v, bool)):
                raise TypeError(f"ToFeConfig: {name} must be a number or None, got {v!r}")
            if v is not None and not 0.0 < v <= 1.0:
                bad(f"{name} must lie in (0, 1] (or be None), got {v}")
        for name in ("evit_fuse", "fuse_frozen"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"ToFeConfig: {name} must be True or False, got {getattr(self, name)!r}")
        for name in ("evit_warmup", "evit_anneal"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                bad(f"{name} must lie in [0, 1] (a fraction of the training steps), "
                    f"got {getattr(self, name)}")
        for name in ("dvit_ratio_weight", "dvit_kl_weight", "dvit_token_weight"):
            if not getattr(self, name) >= 0:
                bad(f"{name} must be >= 0, got {getattr(self, name)}")

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
        """ToFe's token selector (``tofe.selector.{i}.*``); DynamicViT's predictor is not one."""
        return method_of(self.method).learned_selector

    @property
    def learned_ratios(self):
        """``topk`` inference takes the keep ratios recorded in training (not ``tofe-uniform``: its ratios
        are the fixed ``keep_ratios``, whatever its training happened to keep)."""
        return method_of(self.method).learned_ratios

    @property
    def uses_approximator(self):
        return method_of(self.method).uses_approximator

    def approximated_stages(self, depth):
        """Per stage, does its freeze path run an approximator: every stage of a method that uses one,
        but the last under ``last_stage="drop"`` (its frozen tokens are carried unchanged, uncounted)."""
        S = len(self.resolved_stages(depth))
        return tuple(self.uses_approximator and not (self.last_stage == "drop" and s == S - 1)
                     for s in range(S))

    @property
    def reuses_tokens(self):
        return method_of(self.method).reuses

    @property
    def fuses_frozen(self):
        """``fuse_frozen`` as the method reads it: on for a learned selector that freezes and reuses
        tokens (tofe, tofe-identity, tofe-uniform), off for every other method."""
        return self.fuse_frozen and self.learned_selector and self.reuses_tokens

    @property
    def trainable(self):
        """The method has a training forward/backward (training-free ones: dense, idle, evit-drop)."""
        return method_of(self.method).train_forward is not None

    @property
    def needs_teacher(self):
        """The training loss uses the dense teacher's outputs (``training.teacher_forward``)."""
        return method_of(self.method).needs_teacher(self)

    def to_dict(self):
        d = asdict(self)
        d["stages"] = list(self.stages) if self.stages is not None else None
        d["keep_ratios"] = list(self.keep_ratios)
        return d

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict):               # a JSON string would be read character by character
            raise TypeError(f"ToFeConfig.from_dict needs a dict, got {type(d).__name__} {str(d)[:60]!r}")
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"ToFeConfig: unknown field(s) {unknown}")
        d = dict(d)
        if "evit_fuse" not in d and d.get("method") in LEGACY_NAMES:   # saved before the rename
            d["method"] = LEGACY_NAMES[d["method"]]
        if d.get("stages") is not None:
            d["stages"] = tuple(d["stages"])
        return cls(**d)

    def replace(self, **changes):
        return replace(self, **changes)
