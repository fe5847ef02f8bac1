"""Exact tests of the features beyond the anchors: CutMixUp, schedules and `off_last`, masks and several inputs/targets,
N-d data, fp16/bf16 and `channels_last`, seeds, and `learn.show_mix_batch`."""
import math, random, re, warnings
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np
import pytest, torch, torch.nn as nn, torch.nn.functional as F
from fastcore.test import test_eq as eq, test_close as close
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat, BCEWithLogitsLossFlat
from fastai.torch_core import TensorImage, TensorCategory, TensorMask, set_seed
from fastai.data.transforms import Normalize
from fastai.callback.schedule import SchedLin, SchedCos, SchedNo, combine_scheds
from fastai_mixaug.core import box_mask, mix_batch, sample_mix, sample_holes, erase_batch
from fastai_mixaug.callback import MixUp, CutMix, CutMixUp, Cutout, FMix, ResizeMix, RandomMix
from fastai_mixaug.show import mix_titles
import fastai_mixaug.learner  # noqa: F401  (the one-liners)
from mixaug_helpers import drive, constants
from helpers import INPUT_MIXERS
from feat_helpers import tiny_dls, tiny_model, fit_rec, same_batch

MIXERS = INPUT_MIXERS                                # MixUp, CutMix, CutMixUp, FMix, ResizeMix, RandomMix
ALL = MIXERS + [Cutout]
ids = lambda c: getattr(c, '__name__', str(c))


def erase_and(xb, yb, holes):
    "Replay a Cutout draw"
    return erase_batch(xb, yb, *holes)


def own_share(out, x, x1):
    "Per sample: (pasted, blended, λ) read from the pixels of constant inputs `x` (own) and `x1` (partner)"
    own, par = (out == x).flatten(1), (out == x1).flatten(1)
    pasted = (own | par).all(1) & par.any(1) & own.any(1) & (x != x1).flatten(1).all(1)
    v, a, b = out.flatten(1)[:, 0], x.flatten(1)[:, 0], x1.flatten(1)[:, 0]
    blended = ~(own | par).any(1) & (out.flatten(1) == v[:, None]).all(1)
    lam = torch.where(pasted, own.float().mean(1), torch.where(blended, (v - b) / (a - b), torch.ones_like(v)))
    return pasted, blended, lam


# ---------------------------------------------------------------- CutMixUp

def test_cutmixup_switch_prob_0_is_cutmix():
    x, y, pred = constants(16, 3, 12, 10), torch.arange(16) % 5, torch.randn(16, 5)
    a = drive(CutMixUp(switch_prob=0., cutmix_alpha=1., seed=3), (x,), (y,), pred=pred)
    b = drive(CutMix(alpha=1., seed=3), (x,), (y,), pred=pred)
    assert torch.equal(a.xb[0], b.xb[0]) and torch.equal(a.loss_grad, b.loss_grad)
    prm = CutMixUp(switch_prob=0., seed=3).draw(x)
    assert not prm.blend and prm.cut[prm.lam < 1].all()
    out = a.xb[0]
    assert ((out == x) | (out == x[prm.perm])).all()                  # every pixel pasted, none blended
    assert (out != x).any()


def test_cutmixup_switch_prob_1_is_mixup():
    x, y, pred = constants(16, 3, 12, 10), torch.arange(16) % 5, torch.randn(16, 5)
    a = drive(CutMixUp(mixup_alpha=0.4, switch_prob=1., seed=3), (x,), (y,), pred=pred)
    b = drive(MixUp(alpha=0.4, seed=3), (x,), (y,), pred=pred)
    assert torch.equal(a.xb[0], b.xb[0]) and torch.equal(a.loss_grad, b.loss_grad)
    prm = CutMixUp(switch_prob=1., seed=3).draw(x)
    assert prm.cut is None and prm.lo is None
    out = a.xb[0].flatten(1)
    assert (out == out[:, :1]).all()                                   # one value per sample: blended, never pasted
    assert ((prm.lam >= 0.5) & (prm.lam <= 1)).all()


def test_cutmixup_per_sample_blend_or_paste_one_lambda_for_the_loss():
    bs = 48
    torch.manual_seed(0)
    x, y, pred = constants(bs, 3, 8, 8), torch.arange(bs) % 7, torch.randn(bs, 7)
    learn = drive(CutMixUp(seed=11), (x,), (y,), pred=pred)
    prm = CutMixUp(seed=11).draw(x)
    pasted, blended, lam = own_share(learn.xb[0], x, x[prm.perm])
    assert pasted.sum() >= 8 and blended.sum() >= 8                    # both ops in one batch
    moved = (prm.perm != torch.arange(bs)) & (prm.lam < 1)
    eq(pasted, moved & prm.cut); eq(blended, moved & ~prm.cut)
    eq(lam[pasted], prm.lam[pasted])                                   # pasted: λ = exact share of own pixels
    close(lam[blended], prm.lam[blended], eps=1e-5)                    # blended: λ = the blend weight
    ce = lambda t: F.cross_entropy(pred, t, reduction='none')          # the loss uses that same λ per sample
    close(learn.loss_grad, (lam * ce(y) + (1 - lam) * ce(y[prm.perm])).mean(), eps=1e-5)
    eq(learn.yb[0], y)


def test_cutmixup_switch_prob_and_p_are_per_sample_rates():
    x = constants(400, 1, 8, 8)
    prm = CutMixUp(switch_prob=0.25, p=0.6, seed=0).draw(x)
    on = prm.lam < 1
    assert 0.5 < on.float().mean() < 0.7
    assert 0.65 < prm.cut[on].float().mean() < 0.85                   # 1 - switch_prob of the mixed samples are pasted
    for s in range(8):                                                 # mode='batch': one op (RandomMix's `which`) and one λ for the batch
        pb = CutMixUp(mode='batch', seed=s).draw(constants(8, 1, 8, 8))
        assert (pb.which == pb.which[0]).all() and (pb.lam == pb.lam[0]).all()


def test_cutmixup_fit_never_writes_the_dataloader_batch():
    "fastxtend's CutMixUp permuted the learner's target tensor in place: here the raw batch stays as it was"
    torch.manual_seed(0)
    xs, ys = [torch.randn(3, 8, 8) for _ in range(40)], [torch.tensor(i % 4) for i in range(40)]
    learn = Learner(tiny_dls(xs, ys), tiny_model((3, 8, 8), 4), loss_func=nn.CrossEntropyLoss()).cutmixup(seed=0).cutout(seed=1)
    pre, post = fit_rec(learn, 1)
    for r, q in zip(pre, post):
        (xb, yb) = r['refs']
        assert torch.equal(xb[0], r['xb'][0]) and torch.equal(yb[0], r['yb'][0])
        assert torch.equal(q['yb'][0], r['yb'][0]) and not torch.equal(q['xb'][0], r['xb'][0])


# ---------------------------------------------------------------- schedules and off_last

@pytest.fixture(scope='module')
def data():
    torch.manual_seed(0)
    return [torch.randn(3, 8, 8) for _ in range(24)], [torch.tensor(i % 4) for i in range(24)]  # 2 batches of 8 per epoch


def sched_learner(data, cb):
    xs, ys = data
    return Learner(tiny_dls(xs, ys, bs=8), tiny_model((3, 8, 8), 4), loss_func=nn.CrossEntropyLoss(), cbs=cb)


HALF_OFF = {'lambda': lambda pct: 1. if pct < .5 else 0.,
            'combine_scheds': combine_scheds([.5, .5], [SchedCos(1., .3), SchedNo(0., 0.)]),
            'SchedLin': combine_scheds([.5, .5], [SchedLin(1., .5), SchedLin(0., 0.)])}

@pytest.mark.parametrize('cls,sched', [(c, 'lambda') for c in ALL] + [(CutMixUp, 'combine_scheds'), (Cutout, 'SchedLin')],
                         ids=lambda v: ids(v))
def test_p_schedule_off_in_second_half_leaves_batches_unchanged(data, cls, sched):
    pre, post = fit_rec(sched_learner(data, cls(p=HALF_OFF[sched], seed=1)), 2)
    eq([r['pct'] for r in pre], [0., .25, .5, .75])
    for r, q in zip(pre, post):
        assert same_batch(r, q) == (r['pct'] >= .5), r['pct']


def test_alpha_schedule_evaluated_each_batch(data):
    "MixUp(alpha=SchedLin(.4, 0.)): each batch is exactly the draw with α = .4·(1 - pct_train) of that batch"
    pre, post = fit_rec(sched_learner(data, MixUp(alpha=SchedLin(.4, 0.), seed=5)), 2)
    g, g_const = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    n_diff = 0
    for r, q in zip(pre, post):
        prm = sample_mix(8, (8, 8), mixup_alpha=.4 + r['pct'] * (0. - .4), switch_prob=1., generator=g)  # SchedLin's formula
        (x,), _, _, _ = mix_batch(r['xb'], r['yb'], prm)
        assert torch.equal(x, q['xb'][0])
        prm_c = sample_mix(8, (8, 8), mixup_alpha=.4, switch_prob=1., generator=g_const)
        n_diff += not torch.equal(mix_batch(r['xb'], r['yb'], prm_c)[0][0], q['xb'][0])
    eq(n_diff, 3)                                                      # a constant α matches the first batch only


def test_schedule_out_of_range_is_refused():
    x = torch.randn(4, 3, 8, 8)
    with pytest.raises(ValueError, match='outside'): drive(MixUp(p=lambda pct: 1.5), (x,), (torch.arange(4),))
    with pytest.raises(ValueError, match='outside'): drive(CutMix(alpha=lambda pct: -1.), (x,), (torch.arange(4),))


@pytest.mark.parametrize('aug', ['mixup', 'cutmix', 'cutmixup', 'cutout'])
def test_off_last_epochs(data, aug):
    learn = sched_learner(data, None)
    getattr(learn, aug)(off_last=1, seed=2)
    pre, post = fit_rec(learn, 3)
    eq([r['epoch'] for r in pre], [0, 0, 1, 1, 2, 2])
    for r, q in zip(pre, post): assert same_batch(r, q) == (r['epoch'] == 2)


@pytest.mark.parametrize('cls', [MixUp, Cutout], ids=ids)
def test_off_last_fraction(data, cls):
    pre, post = fit_rec(sched_learner(data, cls(off_last=0.25, seed=2)), 2)
    eq([same_batch(r, q) for r, q in zip(pre, post)], [False, False, False, True])  # pct_train .75: off


# ---------------------------------------------------------------- masks, several targets, several inputs

def seg_batch(bs=12, H=8, W=10, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return constants(bs, 3, H, W), torch.randint(0, c, (bs, H, W), generator=g), torch.randn(bs, c, H, W, generator=g)


@pytest.mark.parametrize('lf', [CrossEntropyLossFlat(axis=1), nn.CrossEntropyLoss(reduction='sum')], ids=['CEFlat', 'CEsum'])
def test_cutmix_pastes_masks_through_the_same_box_plain_loss(lf):
    x, m, pred = seg_batch()
    learn = drive(CutMix(seed=1), (x,), (m,), lf, pred)
    prm = CutMix(seed=1).draw(x)
    pasted = (learn.xb[0] == x[prm.perm]).all(1) & (learn.xb[0] != x).all(1)  # pixels that came from the partner
    assert pasted.any()
    eq(learn.yb[0], torch.where(pasted, m[prm.perm], m))              # pasted mask pixels = pasted image pixels
    eq(learn.yb[0].dtype, torch.long)
    red = 'sum' if getattr(lf, 'reduction', 'mean') == 'sum' else 'mean'
    close(learn.loss_grad, F.cross_entropy(pred, learn.yb[0], reduction=red), eps=1e-4)  # plain loss, no λ


def test_cutmixup_masks_pasted_or_per_pixel_loss_mixed():
    x, m, pred = seg_batch(bs=24)
    learn = drive(CutMixUp(seed=4), (x,), (m,), CrossEntropyLossFlat(axis=1), pred)
    prm = CutMixUp(seed=4).draw(x)
    pasted, blended, lam = own_share(learn.xb[0], x, x[prm.perm])
    assert pasted.any() and blended.any()
    px = (learn.xb[0] != x).all(1) & pasted.view(-1, 1, 1)
    eq(learn.yb[0], torch.where(px, m[prm.perm], m))                  # blended samples keep their own mask
    ce = lambda t: F.cross_entropy(pred, t, reduction='none')
    w = torch.where(blended, lam, 1.).view(-1, 1, 1)
    close(learn.loss_grad, (w * ce(learn.yb[0]) + (1 - w) * ce(m[prm.perm])).mean(), eps=1e-5)


def test_mixup_masks_per_pixel_losses_mixed_with_each_lambda():
    x, m, pred = seg_batch()
    learn = drive(MixUp(seed=2), (x,), (m,), nn.CrossEntropyLoss(), pred)
    prm = MixUp(seed=2).draw(x)
    eq(learn.yb[0], m)
    _, _, lam = own_share(learn.xb[0], x, x[prm.perm])
    ce = lambda t: F.cross_entropy(pred, t, reduction='none')
    w = lam.view(-1, 1, 1)
    close(learn.loss_grad, (w * ce(m) + (1 - w) * ce(m[prm.perm])).mean(), eps=1e-5)


def test_cutout_masks_untouched_unless_mask_fill():
    x, m, _ = seg_batch()
    x = x + torch.rand_like(x)                                        # no zeros anywhere
    yf = torch.rand(12, 8, 10)                                        # a float map of the same shape is never filled
    learn = drive(Cutout(n_holes=2, length=3, seed=0), (x,), (m, yf))
    assert torch.equal(learn.yb[0], m) and torch.equal(learn.yb[1], yf)
    learn = drive(Cutout(n_holes=2, length=3, seed=0, mask_fill=255), (x,), (m, yf))
    erased = (learn.xb[0] == 0).all(1)
    lo, hi = Cutout(n_holes=2, length=3, seed=0).draw(x)
    eq(erased, box_mask(lo, hi, (8, 10))[:, 0])
    assert erased.any(0).any() and (~erased).any()
    eq(learn.yb[0], torch.where(erased, 255, m))
    assert torch.equal(learn.yb[1], yf)


def test_several_targets_same_partners_and_lambda():
    "yb = (class ids, mask, multi-hot): ids mix the loss, the mask is pasted, the multi-hot lerped, all with one draw"
    bs, C = 10, 4
    x, m, _ = seg_batch(bs=bs, c=C)
    y, z = torch.arange(bs) % C, (torch.rand(bs, C, generator=torch.Generator().manual_seed(1)) > .5).float()
    pred = torch.randn(bs, C)
    def lf(pred, y, m, z, reduction='mean'):
        l = F.cross_entropy(pred, y, reduction='none') + F.binary_cross_entropy_with_logits(pred, z, reduction='none').mean(1) \
            + 0 * m.flatten(1).float().mean(1)
        return l.mean() if reduction == 'mean' else l
    learn = drive(CutMix(seed=6), (x,), (y, m, z), lf, pred)
    prm = CutMix(seed=6).draw(x)
    pasted, _, lam = own_share(learn.xb[0], x, x[prm.perm])
    px = (learn.xb[0] != x).all(1)
    eq(learn.yb[0], y)
    eq(learn.yb[1], torch.where(px, m[prm.perm], m))
    close(learn.yb[2], lam[:, None] * z + (1 - lam[:, None]) * z[prm.perm], eps=1e-6)
    ce, bce = F.cross_entropy(pred, y, reduction='none'), F.binary_cross_entropy_with_logits(pred, learn.yb[2], reduction='none').mean(1)
    close(learn.loss_grad, (lam * ce + (1 - lam) * F.cross_entropy(pred, y[prm.perm], reduction='none') + bce).mean(), eps=1e-5)


@pytest.mark.parametrize('cls', MIXERS, ids=ids)
def test_several_inputs_same_partners_and_lambda(cls):
    bs = 16
    img, tab = constants(bs, 3, 8, 8), torch.randn(bs, 5, generator=torch.Generator().manual_seed(0))
    tok = torch.randint(0, 100, (bs, 7), generator=torch.Generator().manual_seed(1))       # token ids
    codes = torch.randint(0, 9, (bs, 1, 8, 8), generator=torch.Generator().manual_seed(2))  # an integer image
    learn = drive(cls(seed=3), (img, tab, tok, codes), (torch.arange(bs) % 3,))
    prm = cls(seed=3).draw(img)
    pasted, blended, lam = own_share(learn.xb[0], img, img[prm.perm])
    assert (pasted | blended).any()
    close(learn.xb[1], torch.lerp(tab[prm.perm], tab, lam[:, None]), eps=1e-5)  # floats: the image's λ and partner
    assert torch.equal(learn.xb[2], tok)                               # token ids: left alone
    px = (learn.xb[0] != img).all(1, keepdim=True)
    want = torch.where(px, codes[prm.perm], codes) if cls in (CutMix, FMix) else codes  # integer images: pasted by pure pastes only
    if cls is ResizeMix: want = mix_batch((img.float(), codes.float()), (), prm)[0][1].round().long()  # ...resized, rounded
    assert torch.equal(learn.xb[3], want)
    with pytest.raises(TypeError, match='IntToFloatTensor'):           # nothing mixable: a clear error
        drive(MixUp(), (tok,), (torch.arange(bs),))


# ---------------------------------------------------------------- N-d data

def bounding_box(m):
    "Per sample of `m` (bs, *spatial) bool: the smallest box [lo, hi) holding its True pixels"
    lo, hi = [], []
    for d in range(1, m.ndim):
        on = m.movedim(d, -1).flatten(1, -2).any(1) if m.ndim > 2 else m   # (bs, s_d): any True at each index of dim d
        idx = torch.arange(on.shape[1])
        lo.append(torch.where(on, idx, on.shape[1]).min(1).values); hi.append(torch.where(on, idx + 1, 0).max(1).values)
    return torch.stack(lo, 1), torch.stack(hi, 1)


SHAPES = [(2, 40), (3, 12, 10), (2, 6, 8, 10)]

@pytest.mark.parametrize('shape', SHAPES, ids=lambda s: f'{len(s)-1}d')
def test_cutmix_boxes_in_every_dim(shape):
    bs, sp = 256, shape[1:]
    x = constants(bs, *shape)
    learn = drive(CutMix(seed=4), (x,), (torch.arange(bs) % 3,))
    prm = CutMix(seed=4).draw(x)
    pasted = (learn.xb[0] != x).all(1)
    moved = prm.perm != torch.arange(bs)
    eq(pasted[moved], box_mask(prm.lo, prm.hi, sp)[moved, 0])
    assert ((learn.xb[0] == x) | (learn.xb[0] == x[prm.perm])).all()
    sides, any_ = prm.hi - prm.lo, pasted.flatten(1).any(1)
    lo, hi = bounding_box(pasted)                                      # each pasted region is exactly one box [lo, hi)
    eq(pasted[any_], box_mask(lo, hi, sp)[any_, 0])
    eq(prm.lam[any_], (math.prod(sp) - pasted.flatten(1).sum(1)).float()[any_] / math.prod(sp))  # λ: the exact share kept
    for d, s in enumerate(sp): assert ((sides[:, d] > 0) & (sides[:, d] < s)).any()  # boxes, not slabs
    s = torch.tensor(sp)                                               # unclipped boxes: sides ∝ the data's sides
    free = ((prm.lo > 0) & (prm.hi < s)).all(1) & (sides > 0).all(1)
    assert free.sum() >= 5
    rel = sides[free] / s
    assert ((rel - rel[:, :1]).abs() <= 0.5 / s + 0.5 / s[0] + 1e-6).all()


@pytest.mark.parametrize('shape', SHAPES, ids=lambda s: f'{len(s)-1}d')
def test_cutout_holes_in_every_dim(shape):
    bs, sp = 32, shape[1:]
    x = torch.rand(bs, *shape) + 1
    learn = drive(Cutout(length=3, seed=0), (x,), ())
    erased = (learn.xb[0] == 0).all(1)
    assert torch.equal(learn.xb[0] == 0, erased[:, None].expand_as(x))
    lo, hi = Cutout(length=3, seed=0).draw(x)
    eq(erased, box_mask(lo, hi, sp)[:, 0])
    s = torch.tensor(sp)
    a, b = bounding_box(erased)                                        # one hole: a box, side 3 unless clipped
    eq(erased, box_mask(a, b, sp)[:, 0])
    assert ((b - a) <= 3).all() and ((b - a) == 3)[(a > 0) & (b < s)].all() and ((b - a) == 3).any()
    eq(Cutout(length=0.5).hole_px(sp), round(min(sp) / 2))


@pytest.mark.parametrize('shape', [(5,), (4, 3), *SHAPES], ids=str)
def test_mixup_any_shape(shape):
    x = torch.randn(12, *shape, generator=torch.Generator().manual_seed(0))
    learn = drive(MixUp(seed=1), (x,), (torch.arange(12) % 3,))
    prm = MixUp(seed=1).draw(x)
    w = prm.lam.view(-1, *[1] * len(shape))
    assert torch.equal(learn.xb[0], torch.lerp(x[prm.perm], x, w))
    close(learn.xb[0], w * x + (1 - w) * x[prm.perm], eps=1e-5)


@pytest.mark.parametrize('cls', [CutMix, CutMixUp, Cutout], ids=ids)
def test_boxes_need_spatial_dims(cls):
    with pytest.raises(ValueError, match='spatial'): drive(cls(), (torch.randn(8, 5),), (torch.arange(8),))


@pytest.mark.parametrize('shape', [(2, 16), (2, 4, 6, 6)], ids=['1d', '3d'])
def test_nd_fit_cutout_then_cutmixup(shape):
    torch.manual_seed(0)
    xs, ys = [torch.randn(*shape) for _ in range(24)], [torch.tensor(i % 3) for i in range(24)]
    learn = Learner(tiny_dls(xs, ys), tiny_model(shape, 3), loss_func=nn.CrossEntropyLoss()).cutmixup(seed=1).cutout(length=2, seed=2)
    pre, post = fit_rec(learn, 1)
    cm, co = CutMixUp(seed=1), Cutout(length=2, seed=2)                # replay: holes first, then the mix
    for r, q in zip(pre, post):
        xb, yb = r['xb'], r['yb']
        holes = co.draw(xb[0])
        xb, yb = mix_batch(*erase_and(xb, yb, holes), cm.draw(xb[0]))[:2]
        assert torch.equal(xb[0], q['xb'][0])


# ---------------------------------------------------------------- precision and layout

def prec_data(n=24, shape=(3, 8, 8)):
    torch.manual_seed(0)
    return [TensorImage(torch.randn(*shape)) for _ in range(n)], [TensorCategory(i % 4) for i in range(n)]


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU path: test_mixed_precision_learners_fit_cuda covers GPUs')
@pytest.mark.parametrize('conv', ['to_bf16', 'to_fp16'])
def test_mixed_precision_learners_fit(conv):
    "On CPU fastai's MixedPrecision disables autocast; the callbacks must still run, in their order, with fp32 inputs"
    xs, ys = prec_data()
    learn = getattr(Learner(tiny_dls(xs, ys), tiny_model((3, 8, 8), 4), loss_func=nn.CrossEntropyLoss()), conv)()
    learn.cutmixup(seed=1).cutout(length=3, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')                                # fastai/torch warn that CUDA AMP is off on CPU
        pre, post = fit_rec(learn, 1)
    cm, co = CutMixUp(seed=1), Cutout(length=3, seed=2)
    for r, q in zip(pre, post):
        xb, yb = erase_and(r['xb'], r['yb'], co.draw(r['xb'][0]))
        assert torch.equal(mix_batch(xb, yb, cm.draw(xb[0]))[0][0], q['xb'][0])
    assert all(math.isfinite(float(l)) for l in learn.recorder.losses)


@pytest.mark.cuda
@pytest.mark.parametrize('conv', ['to_bf16', 'to_fp16'])
def test_mixed_precision_learners_fit_cuda(conv):
    xs, ys = prec_data()
    learn = getattr(Learner(tiny_dls(xs, ys, device='cuda'), tiny_model((3, 8, 8), 4), loss_func=nn.CrossEntropyLoss()), conv)()
    learn.cutmixup(seed=1).cutout(length=3, seed=2)
    pre, post = fit_rec(learn, 1)
    cm, co = CutMixUp(seed=1), Cutout(length=3, seed=2)
    for r, q in zip(pre, post):
        eq(q['xb'][0].device.type, 'cuda')
        xb, yb = erase_and(r['xb'], r['yb'], co.draw(r['xb'][0]))
        assert torch.equal(mix_batch(xb, yb, cm.draw(xb[0]))[0][0], q['xb'][0])
    assert all(math.isfinite(float(l)) for l in learn.recorder.losses)


class ToFloat(nn.Module):
    def forward(self, x): return x.float()

@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize('cls', ALL, ids=ids)
def test_half_inputs_channels_last_through_fit(cls, dtype):
    "A half-precision model on half, channels_last inputs: dtype and layout kept, λ in the input's dtype"
    xs, ys = prec_data()
    to_half = lambda t: t.to(dtype).contiguous(memory_format=torch.channels_last) if t.ndim == 4 else t  # applied per tensor
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4)).to(dtype)
    model.append(ToFloat())                                            # fastai's Recorder needs a float32 loss
    learn = Learner(tiny_dls(xs, ys, after_batch=to_half), model, loss_func=nn.CrossEntropyLoss(), cbs=cls(seed=3))
    pre, post = fit_rec(learn, 1)
    rep = cls(seed=3)
    for r, q in zip(pre, post):
        x, out = r['xb'][0], q['xb'][0]
        eq(out.dtype, dtype)
        assert out.is_contiguous(memory_format=torch.channels_last)
        if cls is Cutout: want = erase_and(r['xb'], r['yb'], rep.draw(x))[0][0]
        else:
            prm = rep.draw(x)
            w = prm.lam.view(-1, 1, 1, 1) if cls is MixUp else None
            want = torch.lerp(x[prm.perm], x, w.to(dtype)) if w is not None else mix_batch(r['xb'], r['yb'], prm)[0][0]
        assert torch.equal(out, want)
    assert all(math.isfinite(float(l)) for l in learn.recorder.losses)


@pytest.mark.parametrize('cls', ALL, ids=ids)
def test_channels_last_3d_kept(cls):
    x = torch.randn(6, 2, 4, 6, 6).contiguous(memory_format=torch.channels_last_3d)
    learn = drive(cls(seed=0), (x,), (torch.arange(6) % 3,), pred=torch.randn(6, 3))
    assert learn.xb[0].is_contiguous(memory_format=torch.channels_last_3d)


def test_half_targets_mixed_in_float32():
    x, y = torch.randn(8, 3, 8, 8).bfloat16(), F.one_hot(torch.arange(8) % 4, 4).bfloat16()
    learn = drive(CutMixUp(seed=0), (x,), (y,))
    prm = CutMixUp(seed=0).draw(x)
    eq(learn.yb[0].dtype, torch.float32)
    yf, w = y.float(), prm.lam[:, None]
    close(learn.yb[0], w * yf + (1 - w) * yf[prm.perm], eps=1e-6)


@pytest.mark.parametrize('cls', MIXERS, ids=ids)
def test_half_inputs_loss_mixed_with_float32_lambda(cls):
    "λ in the input's dtype for the pixels, but the float32 λ (not its bf16 rounding) for the loss"
    torch.manual_seed(1)                                               # (not whatever the tests before left: the last check needs λs bf16 rounds)
    x, y, pred = torch.randn(16, 3, 12, 10).bfloat16(), torch.arange(16) % 5, torch.randn(16, 5)  # λ = k/120: not exact in bf16
    learn = drive(cls(seed=0), (x,), (y,), nn.CrossEntropyLoss(), pred)
    prm = cls(seed=0).draw(x)
    eq(prm.lam.dtype, torch.float32)
    ce = lambda t: F.cross_entropy(pred, t, reduction='none')
    mixed = lambda lam: (lam * ce(y) + (1 - lam) * ce(y[prm.perm])).mean()
    eq(learn.loss_grad.dtype, torch.float32)
    close(learn.loss_grad, mixed(prm.lam), eps=1e-6)
    assert (mixed(prm.lam.bfloat16().float()) - mixed(prm.lam)).abs() > 1e-5   # the test can tell the two apart


# ---------------------------------------------------------------- seeds

def run_aug(seed_mix, seed_cut, global_seed, data):
    torch.manual_seed(global_seed); random.seed(global_seed); np.random.seed(global_seed)
    torch.rand(global_seed + 1)                                       # other users of the global RNG
    learn = sched_learner(data, None).cutmixup(seed=seed_mix).cutout(length=3, fill='normal', seed=seed_cut)
    return fit_rec(learn, 1)


def test_seeded_runs_identical_whatever_the_global_rng(data):
    pre_a, a = run_aug(1, 2, 0, data)
    pre_b, b = run_aug(1, 2, 17, data)
    assert all(same_batch(r, q) for r, q in zip(pre_a, pre_b))       # the same raw batches
    assert all(same_batch(r, q) for r, q in zip(a, b))                # and the same augmented ones
    _, c = run_aug(1, 3, 0, data)                                     # another Cutout seed
    _, d = run_aug(4, 2, 0, data)                                     # another CutMixUp seed
    assert not any(same_batch(r, q) for r, q in zip(a, c))
    assert not any(same_batch(r, q) for r, q in zip(a, d))
    assert not same_batch(a[0], a[1])                                 # the generator moves on between batches


def test_unseeded_uses_the_global_rng_set_seed_works(data):
    def run(s):
        set_seed(s, reproducible=True)
        return fit_rec(sched_learner(data, None).cutmixup().cutout(fill='normal'), 1)[1]
    a, b, c = run(0), run(0), run(1)
    assert all(same_batch(r, q) for r, q in zip(a, b))
    assert not any(same_batch(r, q) for r, q in zip(a, c))


@pytest.mark.parametrize('cls', ALL, ids=ids)
def test_seeded_callbacks_leave_the_global_rng_alone(cls):
    learn = drive(cls(seed=0, **({'fill': 'normal'} if cls is Cutout else {})), (torch.randn(8, 3, 8, 8),), (torch.arange(8),))
    learn.xb, learn.yb = (torch.randn(8, 3, 8, 8),), (torch.arange(8),)
    st = torch.get_rng_state()
    learn('before_batch')
    assert torch.equal(st, torch.get_rng_state())


def test_seed_offset_by_rank(monkeypatch):
    x = torch.randn(8, 3, 8, 8)
    ref = lambda s: sample_mix(8, (8, 8), .4, 1., 0., generator=torch.Generator().manual_seed(s))  # CutMix's draw
    for rank in [0, 2]:
        monkeypatch.setenv('RANK', str(rank))
        prm = CutMix(seed=5).draw(x)
        for a, b in zip(prm, ref(5 + rank)): eq(a, b)
        lo, hi = Cutout(length=3, seed=5).draw(x)
        rlo, rhi = sample_holes(8, (8, 8), 1, 3, generator=torch.Generator().manual_seed(5 + rank))
        eq(lo, rlo); eq(hi, rhi)
    monkeypatch.setenv('RANK', '0'); p0 = CutMixUp(seed=5).draw(x)
    monkeypatch.setenv('RANK', '1'); p1 = CutMixUp(seed=5).draw(x)
    assert not (torch.equal(p0.perm, p1.perm) and torch.equal(p0.lam, p1.lam))
    x = torch.randn(64, 3, 8, 8)                                       # RandomMix's host draw (which mix) too
    monkeypatch.setenv('RANK', '0'); w0 = RandomMix(seed=5).draw(x).which
    monkeypatch.setenv('RANK', '1'); w1 = RandomMix(seed=5).draw(x).which
    assert not torch.equal(torch.bincount(w0 + 1, minlength=5), torch.bincount(w1 + 1, minlength=5))


@pytest.mark.cuda
@pytest.mark.parametrize('cls', ALL, ids=ids)
def test_generator_on_the_batch_device(cls):
    x = torch.randn(8, 3, 8, 8, device='cuda')
    cb = cls(seed=0)
    out = cb.draw(x)
    eq(cb._gen.device.type, 'cuda')
    again = cls(seed=0).draw(x)
    for a, b in zip(out, again):
        if isinstance(a, torch.Tensor): assert a.device.type == 'cuda' and torch.equal(a, b)


# ---------------------------------------------------------------- show_mix_batch

VOCAB = ['cat', 'dog', 'emu', 'fox']
MEAN, STD = [.5, .4, .3], [.25, .2, .3]

def img_dls(y_of=lambda i, g: TensorCategory(i % 4), n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [TensorImage(torch.rand(3, 8, 8, generator=g)) for _ in range(n)]
    dls = tiny_dls(xs, [y_of(i, g) for i in range(n)], after_batch=[Normalize.from_stats(MEAN, STD)])
    dls.vocab = VOCAB
    return dls


@pytest.fixture
def fresh_figs():
    plt.close('all'); yield; plt.close('all')


def test_show_mix_batch_titles_and_denormalised_images(fresh_figs):
    dls = img_dls()
    learn = Learner(dls, tiny_model((3, 8, 8), 4), loss_func=nn.CrossEntropyLoss()).cutmixup(seed=0)
    xb, yb = learn.show_mix_batch(n=6)
    fig = plt.gcf()
    eq(len(fig.axes), 6)
    raw = dls.train.one_batch()                                       # the shuffling RNG was put back: the same batch
    prm = CutMixUp(seed=0).draw(raw[0])
    assert torch.equal(xb[0], mix_batch(raw[:1], raw[1:], prm)[0][0])  # the training code path
    eq(yb[0], raw[1])
    titles = [ax.get_title() for ax in fig.axes]
    names = [('MixUp ', 'CutMix ')[k] if l < .995 else '' for k, l in zip(prm.which.tolist(), prm.lam.tolist())]  # CutMixUp is a RandomMix:
    eq(titles, [n + t for n, t in zip(names, mix_titles(raw[1], VOCAB, prm.lam, raw[1][prm.perm]))][:6])      # each sample's mix named
    assert any(' / ' in t for t in titles)
    for i, ax in enumerate(fig.axes):
        (im,) = ax.get_images()
        want = (xb[0][i] * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]).clamp(0, 1).permute(1, 2, 0)
        close(torch.as_tensor(np.asarray(im.get_array())), want, eps=1e-5)


def test_mix_titles_format():
    eq(mix_titles(torch.tensor([1, 2, 3]), VOCAB, torch.tensor([.62, 1., .5]), torch.tensor([0, 1, 3])),
       ['0.62 dog / 0.38 cat', 'emu', '0.50 fox / 0.50 fox'])     # unmixed: the label alone; a same-class partner: λ and both
    eq(mix_titles(torch.tensor([[0., .75, 0., .25], [1., 0., 0., 0.]]), VOCAB), ['0.75 dog / 0.25 fox', '1.00 cat'])


KEY = "title: λ label / 1−λ partner's label"

def conv_net():
    from fastai.layers import ConvLayer
    return nn.Sequential(ConvLayer(3, 4), ConvLayer(4, 4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4))


def test_show_mix_batch_same_class_partner_and_key(fresh_figs):
    "Every sample of one class: each mixed title still gives λ and both labels; the figure's title is the key"
    dls = img_dls(y_of=lambda i, g: TensorCategory(0))
    learn = Learner(dls, tiny_model((3, 8, 8), 4), loss_func=nn.CrossEntropyLoss()).mixup(seed=0)
    learn.show_mix_batch(n=8)
    fig = plt.gcf()
    lam = MixUp(seed=0).draw(dls.train.one_batch()[0]).lam.tolist()
    eq([ax.get_title() for ax in fig.axes], [f"{l:.2f} cat / {1 - l:.2f} cat" if l < .995 else 'cat' for l in lam])
    assert sum(l < .995 for l in lam) >= 6
    eq(fig.get_suptitle(), KEY)


def test_show_mix_batch_names_the_site_plainly(fresh_figs):
    "A hidden mix: the module's name and type, in words; the key says the partner is beside each sample"
    learn = Learner(img_dls(), conv_net(), loss_func=nn.CrossEntropyLoss()).manifold_mixup(modules=['1'], seed=0)
    learn.show_mix_batch(n=4)
    fig = plt.gcf()
    for ax in fig.axes: assert re.fullmatch(r"\d\.\d\d \w+ / \d\.\d\d \w+\n\(mixed after module '1' \(ConvLayer\)\)", ax.get_title()), ax.get_title()
    eq(fig.get_suptitle(), KEY + "; beside each sample, its partner")
    learn = Learner(img_dls(), conv_net(), loss_func=nn.CrossEntropyLoss()).cutout(seed=0)
    learn.show_mix_batch(n=4)
    eq(plt.gcf().get_suptitle(), '')                                 # nothing mixed: no key


def _overlaps(fig) -> list:
    "(title's axes, image axes) pairs whose boxes overlap once drawn; the figure's title against every axes too"
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    axs = fig.axes
    titles = [(i, ax.title.get_window_extent(r)) for i, ax in enumerate(axs) if ax.get_title()] + ([('key', fig._suptitle.get_window_extent(r))] if fig._suptitle is not None and fig.get_suptitle() else [])
    return [(i, j) for i, t in titles for j, ax in enumerate(axs) if t.overlaps(ax.get_window_extent(r))]


def grey_dls(n=48, bs=16):
    "28×28 grey images of 10 classes, as the main command's digits (the shape where titles ran into the row above)"
    g = torch.Generator().manual_seed(0)
    return tiny_dls([TensorImage(torch.rand(1, 28, 28, generator=g)) for _ in range(n)], [TensorCategory(i % 10) for i in range(n)], bs=bs)


@pytest.mark.parametrize('n,nrows', [(16, 2), (16, 4), (9, None), (6, 1), (8, 3)])
def test_show_mix_batch_titles_never_overlap_images(n, nrows, fresh_figs):
    "Two-line titles (a hidden mix, the partner beside each sample) and one-line ones, in 1 to 4 rows: no title box overlaps any image's axes"
    from fastai.layers import ConvLayer
    for cbs in [dict(manifold_mixup=dict(modules=['1'], seed=0)), dict(cutmixup=dict(seed=0))]:
        model = nn.Sequential(ConvLayer(1, 4), ConvLayer(4, 4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
        learn = Learner(grey_dls(), model, loss_func=nn.CrossEntropyLoss())
        for k, kw in cbs.items(): getattr(learn, k)(**kw)
        learn.show_mix_batch(n=n, nrows=nrows)
        fig = plt.gcf()
        eq(len(fig.axes), n)
        eq(_overlaps(fig), [])


def test_overlap_check_can_fail(fresh_figs):
    "The check sees an overlap where there is one: a two-line title on a second row squeezed under the first"
    fig, axs = plt.subplots(2, 1, figsize=(2, 2.2))
    for ax in axs: ax.imshow(np.zeros((8, 8))); ax.set_title('0.92 0 / 0.08 9\n(mixed after module 1)', fontsize=9)
    fig.subplots_adjust(hspace=0)
    assert (1, 0) in _overlaps(fig)


def test_show_mix_batch_grid_and_show_false(fresh_figs):
    learn = Learner(img_dls(), tiny_model((3, 8, 8), 4), loss_func=nn.CrossEntropyLoss()).mixup(seed=0)
    learn.show_mix_batch(n=6, nrows=2)
    fig = plt.gcf()
    eq(len(fig.axes), 6)
    eq(fig.axes[0].get_subplotspec().get_gridspec().get_geometry(), (2, 3))
    learn.show_mix_batch()                                             # n=9 > bs=8: the whole batch
    eq(len(plt.gcf().axes), 8)
    nfig = len(plt.get_fignums())
    xb, yb = learn.show_mix_batch(show=False)
    eq(len(plt.get_fignums()), nfig)
    eq(xb[0].shape, (8, 3, 8, 8))


def test_show_mix_batch_multilabel_top_labels(fresh_figs):
    multi = lambda i, g: (torch.rand(4, generator=g) > .5).float()
    dls = img_dls(multi)
    learn = Learner(dls, tiny_model((3, 8, 8), 4), loss_func=BCEWithLogitsLossFlat()).cutmix(seed=1)
    xb, yb = learn.show_mix_batch(n=8)
    raw = dls.train.one_batch()
    prm = CutMix(seed=1).draw(raw[0])
    w = prm.lam[:, None]
    close(yb[0], w * raw[1] + (1 - w) * raw[1][prm.perm], eps=1e-6)
    titles = [ax.get_title() for ax in plt.gcf().axes]
    eq(titles, mix_titles(raw[1], VOCAB, prm.lam, raw[1][prm.perm]))     # each sample's labels and its partner's, with λ
    names = lambda row: ','.join(VOCAB[i] for i in row.nonzero().flatten().tolist()) or '∅'
    for t, own, other, l in zip(titles, raw[1], raw[1][prm.perm], prm.lam):
        if l >= .995: eq(t, names(own)); continue
        eq(t, f"{float(l):.2f} {names(own)} / {1 - float(l):.2f} {names(other)}")
    assert any(' / ' in t for t in titles)


def test_show_mix_batch_segmentation_mask_beside_image(fresh_figs):
    mask = lambda i, g: TensorMask(torch.randint(0, 3, (8, 8), generator=g))
    dls = img_dls(mask)
    model = nn.Conv2d(3, 3, 1)
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(axis=1)).cutmix(seed=2)
    xb, yb = learn.show_mix_batch(n=4)
    raw = dls.train.one_batch()
    prm = CutMix(seed=2).draw(raw[0])
    inside = box_mask(prm.lo, prm.hi, (8, 8))[:, 0]
    eq(yb[0], torch.where(inside, raw[1][prm.perm], raw[1]))
    axes = plt.gcf().axes
    eq(len(axes), 4)
    for i, ax in enumerate(axes):
        ims = ax.get_images()
        eq(len(ims), 2)                                                # the image, and the pasted mask beside it
        eq(np.asarray(ims[1].get_array()), yb[0][i].numpy())


def test_show_mix_batch_signals_drawn_as_lines(fresh_figs):
    torch.manual_seed(0)
    xs, ys = [torch.randn(2, 16) for _ in range(24)], [torch.tensor(i % 3) for i in range(24)]
    learn = Learner(tiny_dls(xs, ys), tiny_model((2, 16), 3), loss_func=nn.CrossEntropyLoss()).cutmix(seed=0)
    learn.show_mix_batch(n=3)
    axes = plt.gcf().axes
    eq(len(axes), 3)
    assert all(len(ax.get_lines()) == 2 for ax in axes)


@pytest.mark.parametrize('seeded', [True, False], ids=['seeded', 'global_rng'])
def test_show_mix_batch_leaves_a_training_run_unchanged(data, seeded, fresh_figs):
    def run(look):
        set_seed(0, reproducible=True)
        kw = dict(seed=1) if seeded else {}
        learn = sched_learner(data, None).cutout(length=3, fill='normal', **kw).cutmixup(**({'seed': 2} if seeded else {}))
        shown = learn.show_mix_batch(n=4) if look else None
        pre, post = fit_rec(learn, 1)
        return shown, post, [p.detach().clone() for p in learn.model.parameters()]
    _, a, wa = run(False)
    shown, b, wb = run(True)
    assert all(same_batch(r, q) for r, q in zip(a, b))
    assert all(torch.equal(p, q) for p, q in zip(wa, wb))
    assert torch.equal(shown[0][0], b[0]['xb'][0])                   # what was shown is the first training batch
