"CutMixUp, schedules and off_last, masks, N-d data, several inputs/targets, seeds, precision, and show_mix_batch."
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import pytest, torch, torch.nn as nn, torch.nn.functional as F
from fastai.learner import Learner
from fastai.callback.core import Callback
from fastai.callback.schedule import SchedLin, SchedCos, combine_scheds
from fastai.data.core import Datasets
from fastai.losses import CrossEntropyLossFlat, BCEWithLogitsLossFlat
from fastai_mixaug.all import MixUp, CutMix, CutMixUp, Cutout, mix_titles
from fastai_mixaug.core import box_mask, mix_batch, sample_mix
from fastai_mixaug.learner import *
from fastai_mixaug.show import *
from mixaug_helpers import drive, constants


# --- CutMixUp -----------------------------------------------------------------------------------------------
def test_cutmixup_extremes_match_cutmix_and_mixup():
    x = torch.randn(16, 3, 12, 12)
    cm, mu = CutMixUp(switch_prob=0., seed=1).draw(x), CutMixUp(switch_prob=1., seed=1).draw(x)
    assert cm.cut.all() and cm.lo is not None and not cm.blend      # all pasted: CutMix
    assert mu.cut is None and mu.lo is None and (mu.lam >= 0.5).all() # all blended: MixUp
    ref = CutMix(seed=1).draw(x)                                      # switch_prob=0 draws exactly as CutMix
    for a, b in zip((cm.perm, cm.lam, cm.lo, cm.hi), (ref.perm, ref.lam, ref.lo, ref.hi)): assert torch.equal(a, b)
    ref = MixUp(seed=1).draw(x)
    assert torch.equal(mu.perm, ref.perm) and torch.equal(mu.lam, ref.lam)


def test_cutmixup_loss_uses_one_lam_per_sample_and_targets_untouched():
    torch.manual_seed(0)
    x, y, pred = torch.randn(12, 3, 8, 8), torch.randint(0, 4, (12,)), torch.randn(12, 4)
    y0 = y.clone()
    learn = drive(CutMixUp(seed=4), (x,), (y,), nn.CrossEntropyLoss(), pred)
    prm = CutMixUp(seed=4).draw(x)
    ce = lambda t: F.cross_entropy(pred, t, reduction='none')
    torch.testing.assert_close(learn.loss_grad, (prm.lam * ce(y) + (1 - prm.lam) * ce(y[prm.perm])).mean())
    assert torch.equal(y, y0) and torch.equal(learn.yb[0], y0)       # fastxtend's in-place label bug not repeated


# --- schedules and off_last in a real fit --------------------------------------------------------------------
def _img(i): return torch.full((3, 8, 8), float(i))
def _lbl(i): return i % 3

@pytest.fixture(scope='module')
def tiny_dls():
    return Datasets(range(64), [[_img], [_lbl]], splits=[range(48), range(48, 64)]).dataloaders(bs=8)

class Record(Callback):
    "Record (pct_train, epoch, batch before augmentation, batch after) for every training batch"
    def __init__(self, order): self.order, self.rows = order, []
    def before_batch(self):
        if not self.training: return
        if self.order < 0: self.rows.append((self.pct_train, self.epoch, self.learn.xb[0].clone()))
        else: self.rows.append(self.learn.xb[0].clone())

def _fit(dls, cb, n=2):
    pre, post = Record(-5), Record(5)
    learn = Learner(dls, nn.Sequential(nn.Flatten(), nn.Linear(192, 3)), loss_func=nn.CrossEntropyLoss(), cbs=[cb, pre, post])
    with learn.no_bar(), learn.no_logging(): learn.fit(n, 1e-3)
    return [(pct, ep, a, b) for (pct, ep, a), b in zip(pre.rows, post.rows)]

@pytest.mark.parametrize('p', [lambda pct: 1. if pct < 0.5 else 0., combine_scheds([0.5, 0.5], [SchedLin(1., 1.), SchedLin(0., 0.)])],
                         ids=['lambda', 'combine_scheds'])
@pytest.mark.parametrize('cls', [MixUp, CutMix, CutMixUp, Cutout])
def test_schedule_turning_p_to_zero_leaves_second_half_unchanged(tiny_dls, cls, p):
    rows = _fit(tiny_dls, cls(p=p))
    first, second = [r for r in rows if r[0] < 0.5], [r for r in rows if r[0] >= 0.5]
    assert first and second
    assert all(torch.equal(a, b) for _, _, a, b in second)
    assert any(not torch.equal(a, b) for _, _, a, b in first)


def test_alpha_schedule_is_evaluated_each_batch(tiny_dls):
    seen = []
    def alpha(pct): seen.append(pct); return 0.4 * (1 - pct) + 1e-3
    _fit(tiny_dls, MixUp(alpha=alpha), n=1)
    assert len(seen) == 6 and seen == sorted(seen) and seen[0] == 0.
    rows = _fit(tiny_dls, CutMix(alpha=SchedCos(1., 0.)), n=1)     # fastai's annealers work, α reaching 0 turns it off
    assert len(rows) == 6


@pytest.mark.parametrize('off_last', [1, 0.5])
def test_off_last_leaves_the_end_unchanged(tiny_dls, off_last):
    rows = _fit(tiny_dls, CutMix(off_last=off_last), n=2)
    last = [r for r in rows if r[1] == 1]
    assert last and all(torch.equal(a, b) for _, _, a, b in last)
    assert any(not torch.equal(a, b) for _, ep, a, b in rows if ep == 0)


# --- segmentation, several inputs and targets ------------------------------------------------------------------
@pytest.mark.parametrize('cls', [CutMix, CutMixUp])
def test_masks_are_pasted_with_the_pixels(cls):
    x, m = constants(8, 3, 10, 12), torch.randint(0, 6, (8, 10, 12))
    learn = drive(cls(seed=2), (x,), (m,), CrossEntropyLossFlat(axis=1))
    prm = cls(seed=2).draw(x)
    inside = box_mask(prm.lo, prm.hi, (10, 12))
    cut = inside & prm.cut.view(-1, 1, 1, 1)
    assert torch.equal(learn.yb[0], torch.where(cut[:, 0], m[prm.perm], m))
    from_partner = (learn.xb[0] == x[prm.perm]).all(1) & (prm.perm != torch.arange(8)).view(-1, 1, 1)
    assert torch.equal(from_partner & prm.cut.view(-1, 1, 1), cut[:, 0] & (prm.perm != torch.arange(8)).view(-1, 1, 1))


def test_cutmix_on_masks_uses_the_plain_loss_and_mixup_mixes_per_pixel_losses():
    torch.manual_seed(0)
    x, m, pred = torch.randn(4, 3, 6, 6), torch.randint(0, 5, (4, 6, 6)), torch.randn(4, 5, 6, 6)
    lf = CrossEntropyLossFlat(axis=1)
    learn = drive(CutMix(seed=0), (x,), (m,), lf, pred)
    torch.testing.assert_close(learn.loss_grad, F.cross_entropy(pred, learn.yb[0]))
    learn = drive(MixUp(seed=0), (x,), (m,), lf, pred)
    prm = MixUp(seed=0).draw(x)
    pix = lambda t: F.cross_entropy(pred, t, reduction='none')            # (bs, H, W)
    lam = prm.lam.view(-1, 1, 1)
    torch.testing.assert_close(learn.loss_grad, (lam * pix(m) + (1 - lam) * pix(m[prm.perm])).mean())
    assert torch.equal(learn.yb[0], m)


def test_cutout_masks_untouched_or_set_to_ignore_index():
    x, m = torch.randn(4, 3, 10, 10), torch.randint(0, 3, (4, 10, 10))
    assert torch.equal(drive(Cutout(length=4, seed=0), (x,), (m,)).yb[0], m)
    learn = drive(Cutout(length=4, seed=0, mask_fill=-100), (x,), (m,))
    lo, hi = Cutout(length=4, seed=0).draw(x)
    inside = box_mask(lo, hi, (10, 10))[:, 0]
    assert torch.equal(learn.yb[0], torch.where(inside, torch.tensor(-100), m))


def test_several_inputs_and_targets_share_partners_and_lam():
    x1, x2, codes = constants(6, 3, 8, 8), constants(6, 5) * 10, torch.arange(6)[:, None].expand(6, 4).contiguous()
    y1, y2 = torch.arange(6), torch.eye(6)
    learn = drive(MixUp(seed=3), (x1, x2, codes), (y1, y2))
    prm = MixUp(seed=3).draw(x1)
    w = prm.lam
    torch.testing.assert_close(learn.xb[0][:, 0, 0, 0], w * x1[:, 0, 0, 0] + (1 - w) * x1[prm.perm, 0, 0, 0])
    torch.testing.assert_close(learn.xb[1][:, 0], w * x2[:, 0] + (1 - w) * x2[prm.perm, 0])
    assert torch.equal(learn.xb[2], codes)                               # integer inputs (codes, token ids) left alone
    torch.testing.assert_close(learn.yb[1], w[:, None] * y2 + (1 - w[:, None]) * y2[prm.perm])


# --- N-d ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('shape', [(4, 2, 50), (4, 3, 12, 16), (2, 1, 6, 8, 10)], ids=['1d', '2d', '3d'])
def test_nd_boxes_and_holes(shape):
    x = constants(*shape)
    sp, nd = shape[2:], len(shape) - 2
    prm = CutMix(seed=0).draw(x)
    assert prm.lo.shape == (shape[0], nd)
    (out,), *_ = mix_batch((x,), (), prm)
    own = (out == x).flatten(1).float().mean(1)
    moved = prm.perm != torch.arange(shape[0])
    assert torch.equal(own[moved], prm.lam[moved])
    lo, hi = Cutout(length=3, seed=0).draw(x)
    assert lo.shape == (shape[0], 1, nd) and ((hi - lo) <= 3).all()
    out = drive(Cutout(length=3, seed=0), (x,), ()).xb[0]
    assert torch.equal(out == 0, box_mask(lo, hi, sp).expand_as(x))


def test_mixup_on_tabular():
    x, y = torch.randn(10, 7), torch.randint(0, 2, (10,))
    learn = drive(MixUp(seed=0), (x,), (y,))
    prm = MixUp(seed=0).draw(x)
    torch.testing.assert_close(learn.xb[0], prm.lam[:, None] * x + (1 - prm.lam[:, None]) * x[prm.perm])


# --- precision, seeds ----------------------------------------------------------------------------------------
def test_to_bf16_learner_trains(tiny_dls):
    for aug in ['mixup', 'cutmix', 'cutmixup', 'cutout']:
        learn = getattr(Learner(tiny_dls, nn.Sequential(nn.Flatten(), nn.Linear(192, 3)), loss_func=nn.CrossEntropyLoss()).to_bf16(), aug)()
        with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
        assert all(torch.isfinite(p).all() for p in learn.model.parameters())


def test_seed_is_offset_by_rank(monkeypatch):
    x = torch.randn(8, 3, 8, 8)
    a = CutMix(seed=10).draw(x)
    monkeypatch.setenv('RANK', '1')
    b = CutMix(seed=10).draw(x)
    c = CutMix(seed=11).draw(x)                                       # rank 1 with seed 11 = generator seeded 12
    monkeypatch.setenv('RANK', '0')
    d = CutMix(seed=11).draw(x)                                       # rank 0 with seed 11 = generator seeded 11
    assert not torch.equal(a.lo, b.lo)
    assert torch.equal(b.lo, d.lo) and torch.equal(b.perm, d.perm)   # seed 10 + rank 1 == seed 11 + rank 0


# --- show_mix_batch -------------------------------------------------------------------------------------------
def test_show_mix_batch_headless_titles_and_no_side_effects(tiny_dls):
    learn = Learner(tiny_dls, nn.Sequential(nn.Flatten(), nn.Linear(192, 3)), loss_func=nn.CrossEntropyLoss()).cutmix(seed=0)
    plt.close('all')
    xb, yb = learn.show_mix_batch(n=6)
    fig = plt.gcf()
    assert len(fig.axes) == 6
    prm = CutMix(seed=0).draw(xb[0])                                  # the same first draw of the seeded generator
    want = mix_titles(yb[0], tiny_dls.vocab if hasattr(tiny_dls, 'vocab') else None, prm.lam, yb[0][prm.perm])
    assert [ax.get_title() for ax in fig.axes] == want[:6]
    xb2, _ = learn.show_mix_batch(n=6, show=False)                    # looking changed nothing
    assert torch.equal(xb[0], xb2[0])
    plt.close('all')


def test_show_mix_batch_multilabel_and_masks():
    plt.close('all')
    titles = mix_titles(torch.tensor([[1., .62, .38, 0.]]), ['a', 'b', 'c', 'd'])
    assert titles == ['1.00 a / 0.62 b / 0.38 c']
    def img(i): return torch.rand(3, 8, 8)
    def msk(i): return torch.randint(0, 3, (8, 8))
    dls = Datasets(range(16), [[img], [msk]], splits=[range(12), range(12, 16)]).dataloaders(bs=4)
    learn = Learner(dls, nn.Conv2d(3, 3, 1), loss_func=CrossEntropyLossFlat(axis=1)).cutmix()
    learn.show_mix_batch(n=4)
    fig = plt.gcf()
    assert len(fig.axes) == 4 and all(len(ax.get_images()) == 2 for ax in fig.axes)   # image and mask side by side
    plt.close('all')
