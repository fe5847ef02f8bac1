"RandomMix: each sample mixed exactly as the mix it drew would mix it (1-D, 2-D, 3-D; classes, soft targets, masks), in one pass; its odds, modes, refusals and one-liner; CutMixUp on the same code."
import pytest, torch, torch.nn as nn, torch.nn.functional as F
from torch.testing import assert_close
from fastai.learner import Learner
from fastai.test_utils import synth_dbunch
from fastai_mixaug.all import (MixUp, CutMix, CutMixUp, FMix, ResizeMix, RandomMix, ManifoldMixUp, Cutout, MixCallback,
                               MixParams, mix_batch, box_area)
from fastai_mixaug.learner import *  # noqa: F401 (learn.randommix)
from helpers import one_thread, seeded  # noqa: F401 (autouse fixtures)

SHAPES = {'1d': (2, 40), '2d': (3, 12, 16), '3d': (1, 6, 8, 10)}
INTERP = {1: 'linear', 2: 'bilinear', 3: 'trilinear'}

def _box(lo, hi): return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))

def _expected(x, prm, i):
    "Sample `i` as the mix it drew makes it, by hand, one sample at a time (the reference the batched engine must match)"
    k, j, sp = int(prm.which[i]), int(prm.perm[i]), x.shape[2:]
    if k == -1: return x[i]
    if k == 0: return prm.lam[i] * x[i] + (1 - prm.lam[i]) * x[j]               # MixUp
    if k == 2: return torch.where(prm.mask[i], x[j], x[i])                      # FMix
    out, b = x[i].clone(), (slice(None),) + _box(prm.lo[i], prm.hi[i])
    if k == 1: out[b] = x[j][b]                                                 # CutMix: the partner's pixels
    elif prm.hi[i].gt(prm.lo[i]).all():                                         # ResizeMix: the whole partner, resized
        out[b] = F.interpolate(x[j][None], size=tuple((prm.hi[i] - prm.lo[i]).tolist()), mode=INTERP[len(sp)], align_corners=False)[0]
    return out

@pytest.mark.parametrize('seed', [0, 1])
@pytest.mark.parametrize('shape', list(SHAPES.values()), ids=list(SHAPES))
def test_each_sample_is_mixed_exactly_as_its_mix_would(shape, seed):
    bs = 32
    x, y = torch.randn(bs, *shape), torch.randint(0, 5, (bs,))
    prm = RandomMix(seed=seed).draw(x)
    assert set(prm.which.tolist()) == {0, 1, 2, 3}                              # every mix drew some samples
    (out,), (yo,), (y1,), lam = mix_batch((x,), (y,), prm)
    npx = torch.tensor(shape[1:]).prod()
    for i in range(bs):
        assert_close(out[i], _expected(x, prm, i), rtol=1e-5, atol=1e-5)
        k = int(prm.which[i])
        if k == 0: assert prm.lam[i] >= .5 and not prm.cut[i]                   # MixUp keeps the larger share
        elif k == 2: assert prm.lam[i] == (npx - prm.mask[i].sum()) / npx         # FMix: the exact share kept
        else: assert prm.lam[i] == (npx - box_area(prm.lo[i], prm.hi[i])) / npx   # CutMix, ResizeMix: the exact area
    assert torch.equal(yo, y) and torch.equal(y1, y[prm.perm]) and torch.equal(lam, prm.lam)  # classes: the loss is mixed
    assert not torch.equal(out, x)

@pytest.mark.parametrize('ydim', [6, 1], ids=['multilabel', 'regression'])
@pytest.mark.parametrize('shape', list(SHAPES.values()), ids=list(SHAPES))
def test_float_targets_mixed_with_each_samples_lam(shape, ydim):
    x, y = torch.randn(24, *shape), torch.rand(24, ydim)
    prm = RandomMix(seed=2).draw(x)
    _, (yo,), yb1, lam = mix_batch((x,), (y,), prm)
    assert yb1 is None and lam is None
    assert_close(yo, prm.lam[:, None] * y + (1 - prm.lam[:, None]) * y[prm.perm])

@pytest.mark.parametrize('shape', [(3, 12, 16), (1, 6, 8, 10)], ids=['2d', '3d'])
def test_segmentation_masks_pasted_for_pastes_loss_mixed_for_blends(shape):
    bs, sp = 24, shape[1:]
    x, m = torch.randn(bs, *shape), torch.randint(0, 5, (bs, *sp))
    prm = RandomMix(seed=3).draw(x)
    _, (mo,), (m1,), lam = mix_batch((x,), (m,), prm)
    for i in range(bs):
        k, j = int(prm.which[i]), int(prm.perm[i])
        if k == 0: assert torch.equal(mo[i], m[i]) and torch.equal(m1[i], m[j]) and lam[i] == prm.lam[i]  # blend: own mask, loss mixed
        else:
            assert lam[i] == 1                                                  # paste: the mask follows the pixels
            if k == 3 and prm.hi[i].gt(prm.lo[i]).all():
                want, b = m[i].clone(), _box(prm.lo[i], prm.hi[i])
                want[b] = F.interpolate(m[j][None, None].float(), size=tuple((prm.hi[i] - prm.lo[i]).tolist()), mode='nearest')[0, 0].long()
                assert torch.equal(mo[i], want)
            else:
                assert torch.equal(mo[i], _expected(m[:, None], prm, i)[0])

def test_odds_follow_weights_and_p():
    cb, counts = RandomMix(weights=[3, 1, 0, 2], p=.8, seed=0), torch.zeros(5)
    for _ in range(40): counts += torch.bincount(cb.draw(torch.randn(32, 1, 8, 8)).which + 1, minlength=5)
    share = counts / counts.sum()
    assert share[3] == 0                                                        # FMix has weight 0: never drawn
    assert_close(share, torch.tensor([.2, .4, .8 / 6, 0., .8 / 3]), atol=.04, rtol=0)

def test_unmixed_samples_are_left_bit_identical():
    x = torch.randn(32, 3, 8, 8)
    prm = RandomMix(p=.5, seed=1).draw(x)
    (out,), *_ = mix_batch((x,), (), prm)
    alone = prm.which == -1
    assert alone.any() and torch.equal(out[alone], x[alone]) and (prm.lam[alone] == 1).all()

@pytest.mark.parametrize('mixer', [MixUp(alpha=.3), CutMix(alpha=.5), FMix(decay_power=2.), ResizeMix(scale=(.2, .5))], ids=lambda m: type(m).__name__)
def test_one_mix_with_weight_draws_exactly_as_alone(mixer):
    x = torch.randn(16, 3, 12, 12)
    others = [m for m in (MixUp(), CutMix(), FMix(), ResizeMix()) if type(m) is not type(mixer)]
    a = RandomMix([mixer, *others], weights=[1, 0, 0, 0], seed=4).draw(x)
    b = type(mixer)(seed=4, **{k: getattr(mixer, k) for k in ('alpha', 'decay_power', 'scale') if hasattr(mixer, k)}).draw(x)
    for u, v in zip(a[:-1], b[:-1]):
        assert (u is None and v is None) or (u == v if not isinstance(u, torch.Tensor) else torch.equal(u, v))
    assert (a.which == 0).all()

def test_cutmixup_is_randommix_over_mixup_and_cutmix():
    x = torch.randn(16, 3, 12, 12)
    cb = CutMixUp(mixup_alpha=.3, cutmix_alpha=.7, switch_prob=.25, seed=5)
    assert isinstance(cb, RandomMix) and cb.names == ['MixUp', 'CutMix'] and cb.mixup_alpha == .3 and cb.cutmix_alpha == .7
    a, b = cb.draw(x), RandomMix([MixUp(.3), CutMix(.7)], weights=[.25, .75], seed=5).draw(x)
    assert all(torch.equal(u, v) for u, v in zip(a, b) if isinstance(u, torch.Tensor))
    c, d = CutMixUp(switch_prob=0., seed=6).draw(x), CutMix(seed=6).draw(x)      # the extremes: each mix alone, bit for bit
    assert all(torch.equal(getattr(c, f), getattr(d, f)) for f in ('perm', 'lam', 'lo', 'hi'))

def test_batch_mode_one_mix_per_batch_in_its_batch_mode():
    cb, seen = RandomMix(mode='batch', seed=0), set()
    for _ in range(12):
        prm = cb.draw(torch.randn(8, 3, 12, 12))
        k = int(prm.which[0])
        assert (prm.which == k).all(); seen.add(k)
        assert (prm.lam == prm.lam[0]).all()                                    # one λ for the batch
        if prm.lo is not None: assert (prm.lo == prm.lo[0]).all() and (prm.hi == prm.hi[0]).all()
    assert seen == {0, 1, 2, 3}

def test_seeded_reproducible_and_seeds_differ():
    x = torch.randn(16, 3, 12, 12)
    a, b, c = RandomMix(seed=7).draw(x), RandomMix(seed=7).draw(x), RandomMix(seed=8).draw(x)
    assert all(torch.equal(u, v) for u, v in zip(a, b) if isinstance(u, torch.Tensor))
    assert not torch.equal(a.which, c.which)

def test_schedules_of_the_mixes_are_kept_and_alpha_0_switches_a_mix_off():
    cb = RandomMix([MixUp(alpha=lambda pct: 0.), CutMix()], seed=0)             # MixUp's α reached 0: only CutMix mixes
    prm = cb.draw(torch.randn(16, 3, 8, 8))
    assert (prm.which == 1).all()

def test_op_count_does_not_grow_with_the_batch():
    "One pass: no Python loop over samples (the same number of torch ops at bs=32 and bs=256)"
    from torch.profiler import profile, ProfilerActivity
    def count(bs):
        x, y = torch.randn(bs, 3, 16, 16), torch.randint(0, 3, (bs,))
        cb = RandomMix(seed=0)
        mix_batch((x,), (y,), cb.draw(x))                                       # (once first: the caches per shape)
        with profile(activities=[ProfilerActivity.CPU]) as prof: mix_batch((x,), (y,), cb.draw(x))
        return sum(e.name.startswith('aten::') and (e.cpu_parent is None or not e.cpu_parent.name.startswith('aten::')) for e in prof.events())
    assert count(32) == count(256)

@pytest.mark.parametrize('make, exc, msg', [
    (lambda: RandomMix([]), ValueError, '`mixers` must hold at least one'),
    (lambda: RandomMix(MixUp()), TypeError, '`mixers` must be a list'),
    (lambda: RandomMix([MixUp]), TypeError, 'write MixUp()'),
    (lambda: RandomMix(['mixup']), TypeError, '`mixers` must hold mixes'),
    (lambda: RandomMix([Cutout()]), ValueError, 'cannot hold Cutout'),
    (lambda: RandomMix([ManifoldMixUp()]), ValueError, 'cannot hold ManifoldMixUp'),
    (lambda: RandomMix([CutMixUp()]), ValueError, 'cannot hold CutMixUp'),
    (lambda: RandomMix([RandomMix()]), ValueError, 'cannot hold RandomMix'),
    (lambda: RandomMix([MixUp(p=.5)]), ValueError, r"RandomMix's own `p`.*RandomMix\(p="),
    (lambda: RandomMix([CutMix(mode='batch')]), ValueError, r"RandomMix's own `mode`"),
    (lambda: RandomMix([FMix(seed=1)]), ValueError, r"RandomMix's own `seed`"),
    (lambda: RandomMix([ResizeMix(off_last=2)]), ValueError, r"RandomMix's own `off_last`"),
    (lambda: RandomMix([MixUp(mix_target='label')]), ValueError, r"RandomMix's own `mix_target`"),
    (lambda: RandomMix(weights=[1, 1]), ValueError, '`weights` must have one number per mix'),
    (lambda: RandomMix(weights=[1, -1, 1, 1]), ValueError, '`weights` must be finite numbers >= 0'),
    (lambda: RandomMix(weights=[0, 0, 0, 0]), ValueError, '`weights` must not all be 0'),
    (lambda: RandomMix(weights='equal'), TypeError, '`weights` must be a list of numbers'),
    (lambda: RandomMix(p=2), ValueError, '`p`'),
    (lambda: RandomMix(mode='pair'), ValueError, '`mode`'),
])
def test_refused_with_a_clear_error(make, exc, msg):
    with pytest.raises(exc, match=msg): make()

def test_one_liner_and_exports():
    learn = Learner(synth_dbunch(), nn.Linear(1, 1), loss_func=nn.MSELoss())
    assert learn.randommix(weights=[1, 2, 3, 4], p=.5) is learn
    cb, = [c for c in learn.cbs if isinstance(c, RandomMix)]
    assert cb.weights == [1., 2., 3., 4.] and cb.p == .5 and cb.names == ['MixUp', 'CutMix', 'FMix', 'ResizeMix']
    learn.randommix(mixers=[MixUp(), FMix()])
    assert len([c for c in learn.cbs if isinstance(c, MixCallback)]) == 1      # replaced, not added
    import fastai_mixaug.all as A
    assert A.RandomMix is RandomMix

def test_show_mix_batch_names_each_samples_mix():
    "Titles like 'ResizeMix 0.81 3 / 0.19 8'; looking at a batch changes nothing (the callback's RNG is restored)"
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from fastai.data.core import Datasets
    from fastai_mixaug.show import mix_titles
    dls = Datasets(range(32), [[lambda i: torch.rand(3, 16, 16)], [lambda i: torch.tensor(i % 3)]],
                   splits=[range(24), range(24, 32)]).dataloaders(bs=16)
    learn = Learner(dls, nn.Sequential(nn.Flatten(), nn.Linear(768, 3)), loss_func=nn.CrossEntropyLoss()).randommix(seed=0)
    plt.close('all')
    xb, yb = learn.show_mix_batch(n=16)
    titles = [ax.get_title() for ax in plt.gcf().axes]
    prm = RandomMix(seed=0).draw(xb[0])                                          # the same first draw of the seeded generators
    names = ['MixUp', 'CutMix', 'FMix', 'ResizeMix']
    want = [f"{names[k]} {t}" if l < .995 else t for k, l, t in zip(prm.which.tolist(), prm.lam.tolist(),
                                                                    mix_titles(yb[0], None, prm.lam, yb[0][prm.perm]))]
    assert titles == want and {t.split()[0] for t in titles} >= set(names)
    xb2, _ = learn.show_mix_batch(n=16, show=False)
    assert torch.equal(xb[0], xb2[0])
    plt.close('all')
