"""What a new ``minitofe train`` run starts from: the student's ToFe modules (the ``--init`` file's trained
ones when they fit the run's method, stages and shapes; fresh ones with ``--fresh-modules`` or when the file
has none) and the frozen dense teacher (the ``--init`` file's backbone, or ``--teacher FILE``'s). Each says
in one line what it chose; modules that do not fit are refused, naming the key or setting."""
import numpy as np

from .common import ratios_text

FRESH = "--fresh-modules to start new ones"


def start_modules(base, tcfg, o, dtype):
    """-> (the student's ``tofe.*`` params, their learned keep ratios or None, the line saying where they
    come from or None). ``base``: the ``--init`` model; ``o``: the run's options."""
    from ..methods import init_params
    theirs = {k: v for k, v in base.params.items() if k.startswith("tofe.")}
    if not (tcfg.trainable or tcfg.method == "dense"):
        return {}, None, None                    # idle, evit-drop: the trainer refuses them, saying why
    if theirs and not o["fresh_modules"]:
        check_modules_fit(base, tcfg, theirs, o["init"])
        line = (f"ToFe modules: continuing from the trained {base.tofe.method} modules of {o['init']}"
                + (f" (learned keep ratios {ratios_text(base.learned_keep_ratios)})"
                   if base.learned_keep_ratios else "") + "; --fresh-modules starts new ones")
        return {k: v.astype(dtype) for k, v in theirs.items()}, base.learned_keep_ratios, line
    fresh = init_params(base.cfg, tcfg, np.random.default_rng(o["seed"]), dtype)
    if not fresh:                                    # the method has no modules (dense, evit)
        line = f"ToFe modules: none ({tcfg.method} has none; those of {o['init']} are left out)" if theirs \
            else None
        return fresh, None, line
    why = "--fresh-modules" if theirs else f"{o['init']} has none"
    return fresh, None, (f"ToFe modules: new {tcfg.method} modules ({why}), at their init (random "
                         f"selectors / predictors, identity approximators)")


def check_modules_fit(base, tcfg, theirs, init):
    """Raise ``ValueError`` unless the ``--init`` file's modules ``theirs`` are the ones the run trains:
    the same method, the same stages, every key at the shape the run's options give it."""
    from ..methods import param_shapes
    if base.tofe.method != tcfg.method:
        raise ValueError(f"{init}: its ToFe modules were trained for method {base.tofe.method!r}, not "
                         f"{tcfg.method!r}: pass --method {base.tofe.method} to continue them, or {FRESH}")
    depth = base.cfg.depth
    ours, stages = tcfg.resolved_stages(depth), base.tofe.resolved_stages(depth)
    if tuple(ours) != tuple(stages):
        raise ValueError(f"{init}: its ToFe modules are for stages starting at blocks {list(stages)}, these "
                         f"options ask for {list(ours)}: pass --stages {' '.join(map(str, stages))} to "
                         f"continue them, or {FRESH}")
    theirs_last = base.tofe.last_stage
    if theirs_last != tcfg.last_stage:
        raise ValueError(f"{init}: its ToFe modules were trained with --last-stage {theirs_last}, these "
                         f"options ask for {tcfg.last_stage}: pass --last-stage {theirs_last} to continue "
                         f"them, or {FRESH}")
    if base.tofe.fuses_frozen != tcfg.fuses_frozen:
        how = "with" if base.tofe.fuses_frozen else "without"
        flag = "--fuse-frozen" if base.tofe.fuses_frozen else "--no-fuse-frozen"
        raise ValueError(f"{init}: its ToFe modules were trained {how} the fused frozen token, these "
                         f"options ask for {'it' if tcfg.fuses_frozen else 'none'}: pass {flag} to continue "
                         f"them, or {FRESH}")
    want = param_shapes(base.cfg, tcfg)
    for key in sorted(set(want) | set(theirs)):
        have = tuple(theirs[key].shape) if key in theirs else None
        if have != want.get(key):
            r = base.tofe.approx_reduction
            hint = (f" (the file's modules were made with --approx-reduction {r}, these options ask for "
                    f"{tcfg.approx_reduction}): pass --approx-reduction {r} to continue them, or"
                    if r != tcfg.approx_reduction else ": pass")
            raise ValueError(f"{init}: ToFe module {key} is {have or 'missing'} in the file, these options "
                             f"need {want.get(key) or 'no such key'}{hint} {FRESH}")


def start_teacher(base, o, dtype):
    """-> (the frozen dense teacher's backbone params, the line naming them). ``--teacher FILE``: that
    file's backbone, which must have the ``--init`` file's architecture; else the ``--init`` file's own."""
    import minitofe
    if not o["teacher"]:
        tuned = any(k.startswith("tofe.") for k in base.params)
        hint = ("; it is fine-tuned: --teacher FILE makes another the teacher, e.g. the dense backbone it "
                "started from" if tuned else "")
        return ({k: v.astype(dtype) for k, v in base.backbone_params().items()},
                f"teacher: the backbone of the --init file {o['init']}{hint}")
    timm_file = not str(o["teacher"]).endswith(".npz")
    teacher = minitofe.load_model(o["teacher"], model=o["model"] if timm_file else None)
    if teacher.cfg != base.cfg:
        ours, theirs = base.cfg.to_dict(), teacher.cfg.to_dict()
        diff = [f"{k} {theirs[k]!r} (--init: {ours[k]!r})" for k in ours if ours[k] != theirs.get(k)]
        raise ValueError(f"--teacher {o['teacher']}: another architecture than the --init file's: "
                         f"{', '.join(diff)}")
    return ({k: v.astype(dtype) for k, v in teacher.backbone_params().items()},
            f"teacher: the backbone of --teacher {o['teacher']}")
