#!/usr/bin/env python
"""Benchmark fastai_mixaug's MixUp, CutMix, CutMixUp and Cutout against the memory floor and against their peers.

    python benchmarks/bench.py            # full run (CPU here; CUDA when a GPU is available), about 10 minutes on 2 CPU cores
    python benchmarks/bench.py --fit      # also the end-to-end `fit` overhead on MNIST-5k with the main command's model
    python benchmarks/bench.py --quick    # tiny shapes, few repeats: checks that everything runs (the test suite uses it)

Writes `bench_<device>.md` and `bench_<device>.csv` to `--out` (default: benchmarks/results). See benchmarks/README.md.
"""
from __future__ import annotations
import argparse, csv, gc, math, os, platform, statistics, sys, time, warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

os.environ.setdefault('MPLBACKEND', 'Agg')
warnings.filterwarnings('ignore')
import torch, torch.nn as nn
from torch.profiler import profile, ProfilerActivity

from fastai.learner import Learner
from fastai.test_utils import synth_dbunch
from fastai.losses import CrossEntropyLossFlat
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # measure this checkout, whatever is pip-installed
import fastai_mixaug
from fastai_mixaug.callback import MixUp, CutMix, CutMixUp, Cutout, FMix, ResizeMix, RandomMix
from fastai_mixaug.learner import MIXAUGS

FIT_ONLY = ['manifold_mixup']  # mixes inside the forward pass (a hook): timed end to end only, next to MixUp on the same model
OURS = {k: v for k, v in MIXAUGS.items() if k not in FIT_ONLY}  # the library's one list, by one-liner name
OPS = tuple(OURS)
VS_CUTMIX = {'fmix': 1.5, 'resizemix': 1.5}  # the targets: ours ÷ our CutMix, same mode, per batch
VS_MEMBERS = {'randommix': .75}  # issue 18: RandomMix (its four default mixes, per sample) ÷ those four callbacks run one after the other
SYNC_OPS = ('aten::_local_scalar_dense', 'aten::item', 'aten::is_nonzero', 'aten::nonzero', 'aten::masked_select',
            'aten::_unique', 'aten::_unique2', 'aten::unique_consecutive', 'aten::unique_dim', 'aten::repeat_interleave')

# ---------------------------------------------------------------------------------------------------------- implementations
@dataclass
class Impl:
    "One way of doing an op on a batch: `setup(x, y)` returns `(prep, run)`; only `run()` is timed"
    name: str   # shown in the tables
    lib: str    # 'floor', 'ours', 'fastai', 'timm', 'torchvision', 'kornia', 'ref'
    mode: str   # 'per-sample', 'per-batch' or 'reference'
    setup: Callable
    inplace: bool = False  # mutates its input: `prep` restores a work buffer from the batch, untimed
    note: str = ''

def _learner(cb, loss_func=None):
    "A training `Learner` carrying `cb`, driven by hand: we set `xb`/`yb` and call the callback's `before_batch`"
    learn = Learner(synth_dbunch(), nn.Linear(1, 1), loss_func=loss_func or nn.CrossEntropyLoss(), cbs=cb)
    learn.training = True
    return learn

def ours(op, mode, lib='ours', seed=None):
    "Our callback's own `before_batch` (the real library code), called directly on a Learner that carries it"
    def setup(x, y):
        cb = OURS[op](mode=mode, seed=seed)
        learn = _learner(cb)
        def prep(): learn.xb, learn.yb = (x,), (y,)
        return prep, cb.before_batch
    return Impl(f'fastai_mixaug {op} ({mode})', lib, 'per-sample' if mode == 'elem' else 'per-batch', setup,
                note='' if lib == 'ours' else 'reference: our CutMix, timed in the same loop')

def members_in_a_row(op:str):
    "The mixes of RandomMix at their defaults (MixUp, CutMix, FMix, ResizeMix), each a callback of its own on the batch, one after the other"
    def setup(x, y):
        pairs = [(lambda cb: (_learner(cb), cb))(type(m)(mode='elem')) for m in OURS[op]().mixers]
        def prep():
            for learn, _ in pairs: learn.xb, learn.yb = (x,), (y,)
        def run():
            for _, cb in pairs: cb.before_batch()
        return prep, run
    return Impl('its four mixes, one after the other (elem)', 'members', 'per-sample', setup,
                note='reference: MixUp, CutMix, FMix and ResizeMix callbacks in a row, timed in the same loop')

def floor():
    "The physical floor: one `torch.lerp(x[perm], x, w)` over the batch (perm and w drawn beforehand)"
    def setup(x, y):
        bs = x.shape[0]
        perm = torch.randperm(bs, device=x.device)
        w = torch.rand(bs, *[1] * (x.ndim - 1), device=x.device, dtype=x.dtype)
        return (lambda: None), (lambda: torch.lerp(x[perm], x, w))
    return Impl('floor: torch.lerp(x[perm], x, w)', 'floor', 'reference', setup)

def clone_ref():
    "One read and one write of the batch into a fresh tensor, for reference"
    return Impl('x.clone() (1 read + 1 write)', 'ref', 'reference', lambda x, y: ((lambda: None), x.clone))

def copy_ref():
    "One read and one write of the batch into a buffer allocated beforehand: the bandwidth alone, no allocation"
    def setup(x, y):
        buf = torch.empty_like(x)
        return (lambda: None), (lambda: buf.copy_(x))
    return Impl('buf.copy_(x) (no allocation)', 'ref', 'reference', setup)

def _inplace(op_for, copy=False):
    """setup for peers that modify their input. `op_for(y)` returns `op(buf)`, which augments `buf` in place.
    `copy=False`: `prep` restores a work buffer from `x` (untimed) and `run` mutates it (the peer as its users call it).
    `copy=True`: `run` copies the batch then mutates the copy, both timed: what an augmentation that leaves the loader's
    batch alone must do, as ours does (the same work as ours)."""
    def setup(x, y):
        op = op_for(y)
        if copy: return (lambda: None), (lambda: op(x.clone()))
        buf = x.clone()
        return (lambda: buf.copy_(x)), (lambda: op(buf))
    return setup

def _peer(name, lib, mode, op_for, note, copy):
    return Impl(name + (' + x.clone()' if copy else ''), lib, mode, _inplace(op_for, copy), inplace=not copy,
                note=note + ('; plus a copy of the batch, timed: the same work as ours' if copy else ''))

# fastai 2.8: callbacks driven like ours (CrossEntropyLossFlat so that integer targets are kept and the loss mixed, as ours)
def fastai_mixup():
    def setup(x, y):
        from fastai.callback.mixup import MixUp as FMixUp
        cb = FMixUp(0.4); learn = _learner(cb, CrossEntropyLossFlat()); cb.before_train()
        def prep(): learn.xb, learn.yb = (x,), (y,)
        return prep, cb.before_batch
    return Impl('fastai MixUp', 'fastai', 'per-sample', setup)

def fastai_cutmix(copy=False):
    def op_for(y):
        from fastai.callback.mixup import CutMix as FCutMix
        cb = FCutMix(1.); learn = _learner(cb, CrossEntropyLossFlat()); cb.before_train()
        def op(b): learn.xb, learn.yb = (b,), (y,); cb.before_batch()
        return op
    return _peer('fastai CutMix', 'fastai', 'per-batch', op_for, 'one box per batch, pasted in place', copy)

def fastai_erasing(copy=False):
    def op_for(y):
        from fastai.vision.augment import RandomErasing
        from fastai.torch_core import TensorImage
        tfm = RandomErasing(p=1., max_count=1)
        return lambda b: tfm(TensorImage(b), split_idx=0)
    return _peer('fastai RandomErasing', 'fastai', 'per-batch', op_for, 'one rectangle per batch, N(0,1) fill, in place', copy)

# timm 1.0: Mixup (mode='batch' | 'elem') and RandomErasing, both in place
TIMM_ALPHAS = {'mixup': dict(mixup_alpha=0.4, cutmix_alpha=0.), 'cutmix': dict(mixup_alpha=0., cutmix_alpha=1.),
               'cutmixup': dict(mixup_alpha=0.4, cutmix_alpha=1., switch_prob=0.5)}
def timm_mixup(op, mode, copy=False):
    def op_for(y):
        from timm.data.mixup import Mixup
        m = Mixup(**TIMM_ALPHAS[op], mode=mode, num_classes=10, label_smoothing=0.)
        return lambda b: m(b, y)
    note = 'Python loop over samples' if mode == 'elem' else 'one λ (and box) per batch'
    return _peer(f"timm Mixup(mode='{mode}')", 'timm', 'per-sample' if mode == 'elem' else 'per-batch', op_for, note + ', in place', copy)

def timm_erasing(copy=False):
    def op_for(y):
        from timm.data.random_erasing import RandomErasing
        re = RandomErasing(probability=1., mode='const', device=str(y.device))
        return lambda b: re(b)
    return _peer('timm RandomErasing', 'timm', 'per-sample', op_for, 'Python loop over samples, in place', copy)

# torchvision transforms v2: one draw per call (per batch), out of place
def tv(op):
    def setup(x, y):
        from torchvision.transforms import v2
        mk = {'mixup': lambda: v2.MixUp(alpha=0.4, num_classes=10), 'cutmix': lambda: v2.CutMix(alpha=1., num_classes=10),
              'cutmixup': lambda: v2.RandomChoice([v2.CutMix(alpha=1., num_classes=10), v2.MixUp(alpha=0.4, num_classes=10)]),
              'cutout': lambda: v2.RandomErasing(p=1.)}[op]
        t = mk()
        return (lambda: None), ((lambda: t(x)) if op == 'cutout' else (lambda: t(x, y)))
    name = {'mixup': 'MixUp', 'cutmix': 'CutMix', 'cutmixup': 'RandomChoice([CutMix, MixUp])', 'cutout': 'RandomErasing'}[op]
    return Impl(f'torchvision v2 {name}', 'torchvision', 'per-batch', setup, note='one λ / box per call')

# kornia 0.9: vectorised per-sample nn.Modules (same_on_batch=True: one draw for the batch)
def kornia(op, same_on_batch=False):
    def setup(x, y):
        import kornia.augmentation as K
        kw = dict(same_on_batch=same_on_batch)
        if op == 'cutout':
            a = K.RandomErasing(p=1., **kw).to(x.device)
            return (lambda: None), (lambda: a(x))
        a = (K.RandomMixUpV2 if op == 'mixup' else K.RandomCutMixV2)(data_keys=['input', 'class'], **kw).to(x.device)
        return (lambda: None), (lambda: a(x, y))
    name = {'mixup': 'RandomMixUpV2', 'cutmix': 'RandomCutMixV2', 'cutout': 'RandomErasing'}[op]
    return Impl(f'kornia {name}' + (' (same_on_batch)' if same_on_batch else ''), 'kornia',
                'per-batch' if same_on_batch else 'per-sample', setup)

def impls_for(op:str) -> list[Impl]:
    "Floor, clone, ours in both modes, then every peer doing this op"
    res = [floor(), clone_ref(), copy_ref(), ours(op, 'elem'), ours(op, 'batch')]
    both = lambda f, *a: [f(*a), f(*a, copy=True)]   # an in-place peer as its users call it, and made to leave the batch alone
    if op == 'mixup': res += [fastai_mixup(), *both(timm_mixup, op, 'elem'), kornia(op), *both(timm_mixup, op, 'batch'), tv(op), kornia(op, True)]
    if op == 'cutmix': res += [*both(timm_mixup, op, 'elem'), kornia(op), *both(fastai_cutmix), *both(timm_mixup, op, 'batch'), tv(op), kornia(op, True)]
    if op == 'cutmixup': res += [*both(timm_mixup, op, 'elem'), *both(timm_mixup, op, 'batch'), tv(op)]
    if op == 'cutout': res += [*both(timm_erasing), kornia(op), *both(fastai_erasing), tv(op), kornia(op, True)]
    if op in VS_CUTMIX: res += [ours('cutmix', 'elem', 'cutmix'), ours('cutmix', 'batch', 'cutmix')]  # no peer library has them
    if op in VS_MEMBERS: res += [members_in_a_row(op)]
    return res

# ---------------------------------------------------------------------------------------------------------------- measuring
def _sync(device):
    if device.type == 'cuda': torch.cuda.synchronize(device)

def _short(e:BaseException) -> str: return f'{type(e).__name__}: {str(e).splitlines()[0][:90] if str(e) else ""}'

def time_group(impls:list[Impl], x, y, reps:int, warmup:int) -> dict:
    "Interleaved timing: each repetition runs every impl once (order rotated each rep); name -> {'wall': [s], 'cpu': [s]}, or the error"
    dev, ready, out = x.device, [], {}
    for im in impls:
        try:
            prep, run = im.setup(x, y)
            for _ in range(warmup): prep(); _sync(dev); run(); _sync(dev)
            ready.append((im, prep, run)); out[im.name] = dict(wall=[], cpu=[])
        except Exception as e: out[im.name] = _short(e)
    gc_was = gc.isenabled(); gc.disable()  # no collection inside a timed call; one between repetitions
    try:
        for r in range(reps):
            k = r % len(ready)
            for im, prep, run in ready[k:] + ready[:k]:
                prep(); _sync(dev)
                c, t = time.thread_time(), time.perf_counter(); run(); _sync(dev)
                t, c = time.perf_counter() - t, time.thread_time() - c
                out[im.name]['wall'].append(t); out[im.name]['cpu'].append(c)
            gc.collect(1)
    finally:
        if gc_was: gc.enable()
    return out

def _walk(n, acc):
    acc.append(n)
    for c in n.children: _walk(c, acc)
    return acc

def peak_extra_bytes(prep, run, device) -> float:
    "Peak of the memory allocated by `run()` above what was allocated before it (bytes), output included"
    prep(); _sync(device)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device); m0 = torch.cuda.memory_allocated(device)
        res = run(); _sync(device)
        peak = torch.cuda.max_memory_allocated(device) - m0
        del res
        return float(peak)
    from torch._C._profiler import _EventType
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof: res = run()
    del res
    evs = []
    for root in prof.profiler.kineto_results.experimental_event_tree(): _walk(root, evs)
    allocs = sorted((e.start_time_ns, e.extra_fields.alloc_size) for e in evs if e.tag == _EventType.Allocation
                    and getattr(e.extra_fields, 'device_type', torch.device('cpu').type) in (torch.device('cpu').type, 'cpu'))
    cur = peak = 0
    for _, s in allocs: cur += s; peak = max(peak, cur)
    return float(peak)

def count_ops(fn) -> tuple[int, dict, list]:
    "Number of aten ops `fn()` runs, a count by name, and the host-sync ops among them (CPU trace)"
    with profile(activities=[ProfilerActivity.CPU]) as prof: fn()
    names = [e.name for e in prof.events() if e.name.startswith('aten::')]
    by = {}
    for n in names: by[n] = by.get(n, 0) + 1
    return len(names), by, sorted({n for n in names if n in SYNC_OPS})

def structure_check(op:str, mode:str, bss=None, shape=(3, 16, 16), device='cpu') -> dict:
    "Our `before_batch` at two batch sizes: the same number of torch ops (no Python loop over samples), and no host-sync op"
    # RandomMix (and CutMixUp): its ops depend on which mixes drew samples: seeded, the same mix per batch at both sizes; and
    # at 32 and 256, not 4 and 32 (a batch of 4 often leaves a mix without a sample, and so without its ops)
    rand = issubclass(OURS[op], RandomMix)
    bss, res = bss or ((32, 256) if rand else (4, 32)), {}
    for bs in bss:
        x, y = torch.randn(bs, *shape, device=device), torch.randint(0, 10, (bs,), device=device)
        prep, run = ours(op, mode, seed=0 if rand else None).setup(x, y)
        prep(); run(); prep()
        n, by, syncs = count_ops(run)
        res[bs] = (n, by, syncs)
    (n0, by0, s0), (n1, by1, s1) = res[bss[0]], res[bss[1]]
    grows = sorted(k for k in set(by0) | set(by1) if by0.get(k, 0) != by1.get(k, 0))
    return dict(op=op, mode=mode, n_ops=(n0, n1), loop_free=n0 == n1, grows=grows, sync_ops=sorted(set(s0) | set(s1)))

def cuda_sync_check(op:str, mode:str, shape=(16, 3, 32, 32)) -> str:
    "On CUDA: run our `before_batch` under `torch.cuda.set_sync_debug_mode('error')`; 'ok' or the error"
    if not torch.cuda.is_available(): return 'n/a (no CUDA)'
    x, y = torch.randn(*shape, device='cuda'), torch.randint(0, 10, shape[:1], device='cuda')
    prep, run = ours(op, mode).setup(x, y)
    prep(); run(); torch.cuda.synchronize(); prep()  # first call may lazily initialise things
    torch.cuda.set_sync_debug_mode('error')
    try: run(); return 'ok'
    except RuntimeError as e: return _short(e)
    finally: torch.cuda.set_sync_debug_mode(0)

# ---------------------------------------------------------------------------------------------------------------- end to end
CLOCKS = {'wall': time.perf_counter, 'cpu': time.thread_time}  # 'cpu': CPU time of the calling thread (all the work with 1 torch thread)

class _Clock:
    "Accumulates the time spent in a callback's event methods, and in the training phase"
    def __init__(self, fn): self.fn, self.cb, self.train = fn, 0., 0.
    def wrap(self, f):
        def timed():
            t = self.fn(); f(); self.cb += self.fn() - t
        return timed

def fit_overhead(augs, reps:int, n_train:int|None=None, n_valid:int=1000, lr=1e-2, clock='wall') -> list[dict]:
    "`fit(1)` of the main command's learner (`fastai_mixaug.cli.make_learner`: small CNN, MNIST-5k, bs 64) per aug, interleaved"
    from fastai.callback.core import Callback
    from fastai_mixaug.cli import make_learner
    from fastai_mixaug.data import mnist_dls
    from fastai_mixaug.callback import MixAugCallback
    fn = CLOCKS[clock]
    class TrainClock(Callback):
        "Time of the training phase of each epoch (from before_train to after_train)"
        order = -100
        def __init__(self, clock): self.clock = clock
        def before_train(self): self.t = fn()
        def after_train(self): self.clock.train += fn() - self.t
    dls = mnist_dls(bs=64, n_train=n_train, n_valid=n_valid)
    learns, clocks = {}, {}
    for a in augs:
        learn, clk = make_learner(dls, a, seed=0), _Clock(fn)
        for cb in learn.cbs:
            if isinstance(cb, MixAugCallback):  # time the callback's own events inside fit
                for ev in ('before_batch', 'after_loss'):
                    if hasattr(cb, ev): setattr(cb, ev, clk.wrap(getattr(cb, ev)))
        learn.add_cb(TrainClock(clk))
        learns[a], clocks[a] = learn, clk
    def fit1(learn):
        with learn.no_bar(), learn.no_logging(): learn.fit(1, lr)
    for a in augs: fit1(learns[a])  # warm-up
    res = {a: dict(fit=[], wall=[], train=[], cb=[]) for a in augs}
    for r in range(reps):
        k = r % len(augs)
        for a in augs[k:] + augs[:k]:
            clk = clocks[a]; clk.cb = clk.train = 0.
            t, w = fn(), time.perf_counter(); fit1(learns[a])
            res[a]['fit'].append(fn() - t); res[a]['wall'].append(time.perf_counter() - w)
            res[a]['train'].append(clk.train); res[a]['cb'].append(clk.cb)
    med = {a: {k: statistics.median(v) for k, v in res[a].items()} for a in augs}
    rows = []
    for a in augs:
        m, b = med[a], med['none']
        rows.append(dict(aug=a, clock=clock, reps=reps, n_train_batches=len(dls.train), n_valid_batches=len(dls.valid),
                         fit_s=m['fit'], fit_q1=_q(res[a]['fit'], .25), fit_q3=_q(res[a]['fit'], .75), fit_vs_none=m['fit'] / b['fit'],
                         train_s=m['train'], train_vs_none=m['train'] / b['train'], cb_s=m['cb'],
                         cb_share_of_train=statistics.median(c / t for c, t in zip(res[a]['cb'], res[a]['train'])),
                         wall_fit_s=m['wall'], wall_fit_vs_none=m['wall'] / b['wall']))
    return rows

# ---------------------------------------------------------------------------------------------------------------- report
def _q(v, q):
    if not v or isinstance(v, str): return math.nan
    v = sorted(v)
    i = (len(v) - 1) * q; lo = math.floor(i)
    return v[lo] + (v[min(lo + 1, len(v) - 1)] - v[lo]) * (i - lo)

def _fmt(v, spec='.2f', none='—'):
    return none if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

def run_bench(shapes, reps, warmup, device, ops=OPS, clock='wall', log=print) -> list[dict]:
    "Time and measure every impl of every op at every shape; one CSV row per (shape, dtype, op, impl)"
    rows = []
    gc.collect(); gc.freeze()  # what exists now is never collected: collections between repetitions stay cheap
    for shape, dtype in shapes:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(*shape, generator=g).to(device=device, dtype=dtype)
        y = torch.randint(0, 10, shape[:1], generator=g).to(device)
        nbytes = x.numel() * x.element_size()
        for op in ops:
            impls = impls_for(op)
            t0 = time.perf_counter()
            allt = time_group(impls, x, y, reps, warmup)
            times = {k: (v if isinstance(v, str) else v[clock]) for k, v in allt.items()}
            med = {k: statistics.median(v) for k, v in times.items() if isinstance(v, list) and v}
            fl = med.get(impls[0].name, math.nan)
            o_e, o_b = med.get(ours(op, 'elem').name, math.nan), med.get(ours(op, 'batch').name, math.nan)
            for im in impls:
                v = times[im.name]
                err = v if isinstance(v, str) else ''
                m = med.get(im.name, math.nan)
                mem = math.nan
                if not err:
                    try: prep, run = im.setup(x, y); prep(); run(); mem = peak_extra_bytes(prep, run, x.device) / nbytes
                    except Exception as e: err = 'memory: ' + _short(e)
                rows.append(dict(device=str(device), shape='x'.join(map(str, shape)), dtype=str(dtype).replace('torch.', ''), op=op,
                                 impl=im.name, lib=im.lib, mode=im.mode, inplace=im.inplace, reps=0 if isinstance(v, str) else len(v),
                                 clock=clock, median_ms=m * 1e3, q1_ms=_q(v, .25) * 1e3, q3_ms=_q(v, .75) * 1e3, x_floor=m / fl,
                                 ours_elem_over=o_e / m, ours_batch_over=o_b / m, peak_mem_x=mem,
                                 wall_median_ms=math.nan if err else statistics.median(allt[im.name]['wall']) * 1e3,
                                 cpu_median_ms=math.nan if err else statistics.median(allt[im.name]['cpu']) * 1e3,
                                 note=im.note, error=err))
            log(f"  {rows[-1]['shape']} {rows[-1]['dtype']} {op}: floor {fl*1e3:.2f} ms, ours per-sample {o_e*1e3:.2f} ms "
                f"({o_e/fl:.2f}x), per-batch {o_b*1e3:.2f} ms ({o_b/fl:.2f}x)  [{time.perf_counter()-t0:.0f}s]")
    gc.unfreeze()
    return rows

FLOOR_TARGETS = {'64x3x224x224': 1.25, '256x3x32x32': 2.}  # float32, the targets (ours / floor)

def targets(rows, structure, syncs, fits) -> list[tuple]:
    "(target, measured, met) for each of the issue's targets that this run measured"
    out = []
    ours_rows = [r for r in rows if r['lib'] == 'ours' and not r['error']]
    for shape, lim in FLOOR_TARGETS.items():
        rs = [r for r in ours_rows if r['shape'] == shape and r['dtype'] == 'float32']
        if not rs: continue
        worst = max(rs, key=lambda r: r['x_floor'])
        out.append((f"each op ≤ {lim:g}× the floor at {shape} float32", f"worst {worst['x_floor']:.2f}× ({worst['op']}, {worst['mode']}); "
                    + ', '.join(f"{r['op']}/{r['mode'][4:]} {r['x_floor']:.2f}" for r in rs), worst['x_floor'] <= lim))
    for op, lim in VS_CUTMIX.items():
        for mode in ('per-sample', 'per-batch'):
            rs = [r for r in rows if r['op'] == op and r['lib'] == 'cutmix' and r['mode'] == mode and r['dtype'] == 'float32' and not r['error']]
            if not rs: continue
            col = 'ours_elem_over' if mode == 'per-sample' else 'ours_batch_over'
            worst = max(rs, key=lambda r: r[col])
            out.append((f"{op} {mode} ≤ {lim:g}× our CutMix {mode} (float32)", ', '.join(f"{r['shape']} {r[col]:.2f}" for r in rs),
                        worst[col] <= lim))
    for op, lim in VS_MEMBERS.items():
        rs = [r for r in rows if r['op'] == op and r['lib'] == 'members' and r['dtype'] == 'float32' and not r['error']]
        if rs: out.append((f"{op} per-sample ≤ {lim:g}× its four mixes one after the other (float32)",
                           ', '.join(f"{r['shape']} {r['ours_elem_over']:.2f}" for r in rs), all(r['ours_elem_over'] <= lim for r in rs)))
    allpeers = [r for r in rows if r['lib'] not in ('ours', 'floor', 'ref', 'cutmix', 'members') and not r['error']]
    peers = [r for r in allpeers if not r['inplace']]   # the same work as ours: in-place peers with the copy they skip
    for mode, col, lim, what in (('per-sample', 'ours_elem_over', 1., 'per-sample ops faster than every per-sample peer'),
                                 ('per-batch', 'ours_batch_over', 1.1, 'per-batch ops within 1.1× of every per-batch peer'),
                                 ('per-sample', 'ours_elem_over', 1., '(also) per-sample ops faster than in-place per-sample peers without the copy'),
                                 ('per-batch', 'ours_batch_over', 1.1, '(also) per-batch ops within 1.1× of in-place per-batch peers without the copy')):
        ps = [r for r in (allpeers if what.startswith('(also)') else peers) if r['mode'] == mode and (r['inplace'] or not what.startswith('(also)'))]
        if not ps: continue
        bad = [r for r in ps if not r[col] < lim] if lim == 1. else [r for r in ps if not r[col] <= lim]
        worst = max(ps, key=lambda r: r[col])
        out.append((what + ' (ours ÷ peer)', f"worst {worst[col]:.2f} ({worst['impl']}, {worst['op']}, {worst['shape']} {worst['dtype']}); "
                    f"{len(ps) - len(bad)}/{len(ps)} comparisons met" + (': missed vs ' + '; '.join(
                        f"{r['impl']} {r['op']} {r['shape']} {r['dtype']} {r[col]:.2f}" for r in bad) if bad else ''), not bad))
    sp = [r for r in peers if r['mode'] == 'per-batch']   # (same work: copies included)
    if sp:
        worst = max(sp, key=lambda r: r['ours_elem_over'])
        n_ok = sum(r['ours_elem_over'] <= 1.1 for r in sp)
        out.append(('(also) per-sample ops within 1.1× of every per-batch peer (ours ÷ peer)',
                    f"worst {worst['ours_elem_over']:.2f} ({worst['impl']}, {worst['op']}, {worst['shape']} {worst['dtype']}); {n_ok}/{len(sp)} met",
                    n_ok == len(sp)))
    if structure:
        lf = [s for s in structure if not s['loop_free']]
        out.append(('no Python loop over samples (same torch op count at bs 4 and 32)', 'all loop-free' if not lf else
                    'loops: ' + ', '.join(f"{s['op']}/{s['mode']}" for s in lf), not lf))
        sy = [s for s in structure if s['sync_ops']]
        out.append(('no host-sync op in before_batch (CPU trace)', 'none found' if not sy else
                    '; '.join(f"{s['op']}/{s['mode']}: {', '.join(s['sync_ops'])}" for s in sy), not sy))
        cu = {k: v for k, v in syncs.items() if not v.startswith('n/a')}
        if cu: out.append(('CUDA: set_sync_debug_mode("error") passes', '; '.join(f"{k[0]}/{k[1]}: {v}" for k, v in cu.items()),
                           all(v == 'ok' for v in cu.values())))
        else: out.append(('CUDA: set_sync_debug_mode("error") passes', 'not run (no CUDA device)', None))
    if fits:
        fs = [f for f in fits if f['aug'] != 'none']
        worst = max(fs, key=lambda f: f['fit_vs_none'])
        out.append(('fit overhead vs no augmentation ≤ 3%', f"worst {(worst['fit_vs_none']-1)*100:+.1f}% ({worst['aug']}); "
                    + ', '.join(f"{f['aug']} {(f['fit_vs_none']-1)*100:+.1f}% (train phase {(f['train_vs_none']-1)*100:+.1f}%, "
                                f"callback {f['cb_share_of_train']*100:.1f}% of it)" for f in fs), worst['fit_vs_none'] <= 1.03))
    return out

def markdown(rows, structure, syncs, fits, header) -> str:
    out = [header, '']
    tg = targets(rows, structure, syncs, fits)
    if tg:
        out += ['## Targets', '', '| target | measured | met |', '|---|---|---|']
        out += [f"| {t} | {m} | {'—' if ok is None else 'yes' if ok else '**no**'} |" for t, m, ok in tg]
        out.append('')
    if rows:
        out += ['## Against the floor', '',
                'Median time of our `before_batch` (the callback method, called directly on a training `Learner`) as a multiple of the '
                'floor `torch.lerp(x[perm], x, w)` timed in the same interleaved loop. `clone`: one read + one write into a fresh '
                'tensor; `copy`: the same into a buffer allocated beforehand (bandwidth only). Peak extra memory: the most memory '
                'allocated during the call (output included) above what was allocated before it, as a multiple of the batch.', '',
                '| shape | dtype | op | floor ms | clone ms | copy ms | ours per-sample ms | ×floor | ours per-batch ms | ×floor | '
                'peak mem per-sample (×batch) | per-batch | floor |', '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
        for k in dict.fromkeys((r['shape'], r['dtype'], r['op']) for r in rows):
            rs = {(r['lib'], r['mode'], r['impl'][:5]): r for r in rows if (r['shape'], r['dtype'], r['op']) == k}
            fl, cl, cp = rs['floor', 'reference', 'floor'], rs['ref', 'reference', 'x.clo'], rs['ref', 'reference', 'buf.c']
            oe = next(r for r in rs.values() if r['lib'] == 'ours' and r['mode'] == 'per-sample')
            ob = next(r for r in rs.values() if r['lib'] == 'ours' and r['mode'] == 'per-batch')
            out.append(f"| {k[0]} | {k[1]} | {k[2]} | {_fmt(fl['median_ms'])} | {_fmt(cl['median_ms'])} | {_fmt(cp['median_ms'])} | "
                       f"{_fmt(oe['median_ms'])} | **{_fmt(oe['x_floor'])}** | {_fmt(ob['median_ms'])} | **{_fmt(ob['x_floor'])}** | "
                       f"{_fmt(oe['peak_mem_x'])} | {_fmt(ob['peak_mem_x'])} | {_fmt(fl['peak_mem_x'])} |")
        out += ['', '## Against the peers', '',
                '`ours ÷ peer` < 1: ours is faster. Per-sample peers draw λ/boxes per sample (the same work as ours per-sample); '
                'per-batch peers draw once per batch (the same work as ours per-batch, and less than ours per-sample). '
                'Bold: the same work. In-place peers (timm, fastai CutMix/RandomErasing) are timed on a work buffer restored from '
                'the batch outside the timed region, so they pay no copy; each also has a `+ x.clone()` row, the peer on a fresh copy of the '
                'batch, both timed: what leaving the loader\'s batch alone costs (ours never writes into it), so the same work as ours. '
                'The targets are judged on the same-work rows; the `(also)` targets on the in-place rows.', '',
                '| shape | dtype | op | peer | peer mode | peer ms | ours per-sample ÷ peer | ours per-batch ÷ peer | peer peak mem (×batch) | note |',
                '|---|---|---|---|---|---|---|---|---|---|']
        for r in rows:
            if r['lib'] in ('ours', 'floor', 'ref'): continue
            if r['error']:
                out.append(f"| {r['shape']} | {r['dtype']} | {r['op']} | {r['impl']} | {r['mode']} | fails: {r['error']} | | | | {r['note']} |"); continue
            b = lambda m: '**' if r['mode'] == m else ''
            out.append(f"| {r['shape']} | {r['dtype']} | {r['op']} | {r['impl']} | {r['mode']} | {_fmt(r['median_ms'])} | "
                       f"{b('per-sample')}{_fmt(r['ours_elem_over'])}{b('per-sample')} | {b('per-batch')}{_fmt(r['ours_batch_over'])}{b('per-batch')} | "
                       f"{_fmt(r['peak_mem_x'])} | {r['note']} |")
    if structure:
        out += ['', '## Structure of our `before_batch`', '',
                'Torch ops run at batch size 4 and 32 (equal: no Python loop over samples); host-sync ops in the trace '
                f"({', '.join('`' + s.split('::')[1] + '`' for s in SYNC_OPS)}); on CUDA, the call under "
                '`torch.cuda.set_sync_debug_mode("error")`.', '',
                '| op | mode | torch ops at bs 4 / 32 | loop-free | host-sync ops | CUDA sync debug "error" |', '|---|---|---|---|---|---|']
        for s in structure:
            out.append(f"| {s['op']} | {s['mode']} | {s['n_ops'][0]} / {s['n_ops'][1]} | {'yes' if s['loop_free'] else 'NO: ' + ', '.join(s['grows'])} | "
                       f"{', '.join(s['sync_ops']) or 'none'} | {syncs.get((s['op'], s['mode']), 'n/a')} |")
    if fits:
        out += ['', '## End to end: `fit(1)` on MNIST-5k', '',
                "The main command's learner (`fastai_mixaug.cli.make_learner`: its small CNN on `mnist_dls(bs=64)`; "
                f"{fits[0]['n_train_batches']} training and {fits[0]['n_valid_batches']} validation batches), one epoch of `fit` per repetition, augmentations interleaved, medians. `train`: the training phase alone "
                "(before_train → after_train, no validation); per batch, and per batch over no augmentation (what the augmentation costs, "
                "all of it). `callback`: time inside the callback's `before_batch` + `after_loss` (for `manifold_mixup` this leaves out "
                "its hook, which runs inside the forward pass: read its cost from the per-batch columns).", '',
                f"Times are {'wall-clock' if fits[0]['clock'] == 'wall' else 'CPU time of the main thread (the training loop; data-loading workers are other processes)'}; "
                "the last two columns are wall-clock whatever the clock.", '',
                '| aug | fit s | q1–q3 | fit ×none | train s | train ×none | train ms/batch | ms/batch over none | callback s | callback share of train | wall fit s | wall fit ×none |',
                '|---|---|---|---|---|---|---|---|---|---|---|---|']
        for f in fits:
            nb, t0 = f['n_train_batches'], next(g['train_s'] for g in fits if g['aug'] == 'none')
            out.append(f"| {f['aug']} | {f['fit_s']:.2f} | {f['fit_q1']:.2f}–{f['fit_q3']:.2f} | {f['fit_vs_none']:.3f} | {f['train_s']:.2f} | "
                       f"{f['train_vs_none']:.3f} | {f['train_s'] / nb * 1e3:.2f} | {(f['train_s'] - t0) / nb * 1e3:+.2f} | {f['cb_s']:.3f} | "
                       f"{f['cb_share_of_train'] * 100:.2f}% | {f['wall_fit_s']:.2f} | {f['wall_fit_vs_none']:.3f} |")
    return '\n'.join(out) + '\n'

def profile_ours(shape, dtype, device, ops=OPS, n=5, row_limit=12) -> str:
    "Op-by-op time of our `before_batch`, per op and mode, from torch.profiler"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g).to(device=device, dtype=dtype); y = torch.randint(0, 10, shape[:1]).to(device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    out = []
    for op in ops:
        for mode in ('elem', 'batch'):
            prep, run = ours(op, mode).setup(x, y); prep(); run()
            with profile(activities=acts) as prof:
                for _ in range(n): prep(); run(); _sync(device)
            key = 'self_cuda_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
            out.append(f"### {op} ({mode}), {'x'.join(map(str, shape))} {dtype}, {n} calls\n\n```\n"
                       f"{prof.key_averages().table(sort_by=key, row_limit=row_limit)}\n```\n")
    return '\n'.join(out)

# ---------------------------------------------------------------------------------------------------------------- main
def parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--quick', action='store_true', help='tiny shapes and few repeats (a smoke test, used by tests/test_benchmark.py)')
    p.add_argument('--fit', action='store_true', help='also time fit(1) on MNIST-5k with each augmentation vs none (slower)')
    p.add_argument('--no-micro', action='store_true', help='skip the per-op timings (with --fit: the end-to-end part only)')
    p.add_argument('--profile', action='store_true', help="also write torch.profiler op tables of our before_batch (profile_<device>.md)")
    p.add_argument('--threads', type=int, default=None, help="torch threads (default: torch's own); 1 gives stable timings on a loaded machine")
    p.add_argument('--clock', choices=('wall', 'cpu'), default='wall', help="'wall' (default) or 'cpu': CPU time of the "
                   "calling thread, which leaves out waiting for a core on a shared machine (CPU device with --threads 1 only)")
    p.add_argument('--device', default=None, help="'cpu' or 'cuda' (default: cuda if available, else cpu)")
    p.add_argument('--ops', default=','.join(OPS), help=f"comma-separated ops (default: {','.join(OPS)})")
    p.add_argument('--reps', type=int, default=None, help='timed repetitions per impl (default: 20; --quick: 3)')
    p.add_argument('--warmup', type=int, default=None, help='untimed calls per impl first (default: 3; --quick: 1)')
    p.add_argument('--fit-reps', type=int, default=None, help='interleaved fit(1) repetitions per aug (default: 3; --quick: 1)')
    p.add_argument('--out', type=Path, default=Path(__file__).resolve().parent / 'results', help='output folder (default: benchmarks/results)')
    return p

def main(argv=None):
    a = parser().parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    device = torch.device(a.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    if a.clock == 'cpu' and (device.type != 'cpu' or torch.get_num_threads() != 1):
        parser().error("--clock cpu measures the calling thread only: use it on the CPU with --threads 1")
    ops = [o.strip() for o in a.ops.split(',') if o.strip()]
    bad = [o for o in ops if o not in OPS]
    if bad: parser().error(f"unknown op(s) {bad}: choose from {OPS}")
    reps, warmup = a.reps or (3 if a.quick else 20), a.warmup if a.warmup is not None else (1 if a.quick else 3)
    fit_reps = a.fit_reps or (1 if a.quick else 3)
    shapes = ([((8, 3, 16, 16), torch.float32), ((16, 3, 8, 8), torch.float32), ((8, 3, 16, 16), torch.bfloat16)] if a.quick else
              [((64, 3, 224, 224), torch.float32), ((256, 3, 32, 32), torch.float32), ((64, 3, 224, 224), torch.bfloat16)])
    import timm, kornia, torchvision, fastai
    try:  # which library code was measured
        import subprocess
        git = subprocess.run(['git', 'describe', '--always', '--dirty'], capture_output=True, text=True, timeout=10,
                             cwd=Path(fastai_mixaug.__file__).resolve().parent).stdout.strip() or 'unknown'
    except Exception: git = 'unknown'
    dev_name = torch.cuda.get_device_name(device) if device.type == 'cuda' else (platform.processor() or platform.machine())
    cmd = ' '.join(['python benchmarks/bench.py'] + list(argv if argv is not None else sys.argv[1:]))
    header = (f"# fastai_mixaug benchmark ({device.type}{', quick' if a.quick else ''})\n\n`{cmd}`\n\n"
              f"torch {torch.__version__}, torch threads: {torch.get_num_threads()}, CPUs: {os.cpu_count()}, device: {dev_name}; "
              f"fastai_mixaug {fastai_mixaug.__version__} (git {git}, {Path(fastai_mixaug.__file__).parent}), fastai {fastai.__version__}, timm {timm.__version__}, "
              f"torchvision {torchvision.__version__}, kornia {kornia.__version__}; {reps} timed reps after {warmup} warm-up, "
              f"interleaved, medians of {'wall-clock time' if a.clock == 'wall' else 'the CPU time of the calling thread'}." + (f" Load average at start: {', '.join(f'{v:.1f}' for v in os.getloadavg())}." if hasattr(os, 'getloadavg') else ''))
    print(header.replace('`', ''), flush=True)
    t0 = time.perf_counter()
    rows, structure, syncs, fits = [], [], {}, []
    if not a.no_micro:
        rows = run_bench(shapes, reps, warmup, device, ops, a.clock, log=lambda s: print(s, flush=True))
        structure = [structure_check(op, m) for op in ops for m in ('elem', 'batch')]
        syncs = {(op, m): cuda_sync_check(op, m) for op in ops for m in ('elem', 'batch')}
    if a.fit:
        print('fit(1) on MNIST-5k ...', flush=True)
        fits = fit_overhead(['none'] + ops + FIT_ONLY, fit_reps, clock=a.clock, **(dict(n_train=128, n_valid=64) if a.quick else {}))
    md = markdown(rows, structure, syncs, fits, header) + f"\nTotal run time: {time.perf_counter() - t0:.0f} s.\n"
    a.out.mkdir(parents=True, exist_ok=True)
    stem = f"bench_{device.type}{'_quick' if a.quick else ''}{'_fit' if a.no_micro else ''}"
    (a.out / f'{stem}.md').write_text(md)
    if rows:
        with open(a.out / f'{stem}.csv', 'w', newline='') as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0])); w.writeheader(); w.writerows(rows)
    if fits:
        with open(a.out / f"{stem}{'' if a.no_micro else '_fit'}.csv", 'w', newline='') as f:
            w = csv.DictWriter(f, fieldnames=list(fits[0])); w.writeheader(); w.writerows(fits)
    if a.profile:
        prof = [profile_ours(s, d, device, ops) for s, d in shapes]
        (a.out / f"profile_{device.type}{'_quick' if a.quick else ''}.md").write_text(header + '\n\n' + '\n'.join(prof))
    print('\n' + md + f"Written to {a.out}/{stem}.*")
    return rows, structure, syncs, fits

if __name__ == '__main__': main()
