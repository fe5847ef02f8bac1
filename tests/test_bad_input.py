"Every bad input gives a clear ValueError/TypeError naming the parameter, at construction or at the first batch, and changes nothing."
import math
import pytest, torch, torch.nn as nn, torch.nn.functional as F
from fastcore.test import test_eq as eq
from fastai_mixaug.all import MixUp, CutMix, CutMixUp, Cutout, FMix, ResizeMix, RandomMix
from helpers import (one_thread, seeded, INPUT_MIXERS,  # noqa: F401 (autouse fixtures: one torch thread, a seeded RNG)
                     step, image_dls, make_learner, tiny_cnn, quiet_fit, params, same_params, same_cbs, get_row, get_u8,
                     CountForward)

MIXERS = INPUT_MIXERS                                # MixUp, CutMix, CutMixUp, FMix, ResizeMix, RandomMix
ALL = MIXERS + [Cutout]
ids = lambda c: c.__name__


# ---------- at construction ----------
BAD_ALPHAS = [0, 0., -1, -0.5, math.nan, math.inf]

@pytest.mark.parametrize('v', BAD_ALPHAS)
def test_alpha_not_positive(v):
    for cls in (MixUp, CutMix):
        with pytest.raises(ValueError, match='`alpha`'): cls(alpha=v)
        with pytest.raises(ValueError, match='`alpha`'): cls(v)
    with pytest.raises(ValueError, match='`mixup_alpha`'): CutMixUp(mixup_alpha=v)
    with pytest.raises(ValueError, match='`cutmix_alpha`'): CutMixUp(cutmix_alpha=v)


@pytest.mark.parametrize('v', ['0.4', None, True, [0.4]])
def test_alpha_not_a_number(v):
    with pytest.raises(TypeError, match='`alpha`'): MixUp(alpha=v)
    with pytest.raises(TypeError, match='`cutmix_alpha`'): CutMixUp(cutmix_alpha=v)


@pytest.mark.parametrize('v', [-0.1, 1.01, 2, -1, math.nan, math.inf])
@pytest.mark.parametrize('cls', ALL, ids=ids)
def test_p_outside_0_1(cls, v):
    with pytest.raises(ValueError, match='`p`'): cls(p=v)


@pytest.mark.parametrize('v', [-0.5, 1.5])
def test_switch_prob_outside_0_1(v):
    with pytest.raises(ValueError, match='`switch_prob`'): CutMixUp(switch_prob=v)


@pytest.mark.parametrize('cls', ALL, ids=ids)
def test_p_not_a_number(cls):
    with pytest.raises(TypeError, match='`p`'): cls(p='0.5')
    with pytest.raises(TypeError, match='`p`'): cls(p=None)


@pytest.mark.parametrize('v', [0, -1, -10])
def test_n_holes_below_1(v):
    with pytest.raises(ValueError, match='`n_holes`'): Cutout(n_holes=v)


@pytest.mark.parametrize('v', [1.5, 2., True, '2'])
def test_n_holes_not_an_int(v):
    with pytest.raises(TypeError, match='`n_holes`'): Cutout(n_holes=v)


@pytest.mark.parametrize('v', [0, -3, 0., -0.5, 1.5, math.nan])
def test_length_not_positive_or_fraction_above_1(v):
    with pytest.raises(ValueError, match='`length`'): Cutout(length=v)


@pytest.mark.parametrize('v', ['8', None, True])
def test_length_not_a_number(v):
    with pytest.raises(TypeError, match='`length`'): Cutout(length=v)


@pytest.mark.parametrize('cls', ALL, ids=ids)
def test_other_parameters(cls):
    with pytest.raises(ValueError, match='`mode`'): cls(mode='sample')
    with pytest.raises(TypeError, match='`seed`'): cls(seed='1')
    with pytest.raises(TypeError, match='`seed`'): cls(seed=1.5)
    for v in (-1, 1.5, 'last'):
        with pytest.raises(ValueError, match='`off_last`'): cls(off_last=v)
    if cls is Cutout:
        with pytest.raises(ValueError, match='`fill`'): cls(fill='zeros')
        with pytest.raises(TypeError, match='`fill`'): cls(fill=None)
        with pytest.raises(TypeError, match='`mask_fill`'): cls(mask_fill=0.5)
    else:
        with pytest.raises(ValueError, match='`mix_target`'): cls(mix_target='soft')


@pytest.mark.parametrize('aug,kw', [('mixup', dict(alpha=-1)), ('cutmix', dict(p=2)), ('cutmixup', dict(switch_prob=-1)),
                                    ('cutout', dict(length=0)), ('mixup', dict(alpah=1.))], ids=str)
def test_one_liner_bad_argument_leaves_the_learner_as_it_was(aug, kw):
    learn = make_learner(image_dls())
    getattr(learn, aug)(seed=1)                                     # an existing callback of that kind
    cbs = list(learn.cbs)
    with pytest.raises((ValueError, TypeError)): getattr(learn, aug)(**kw)
    assert same_cbs(learn.cbs, cbs)


# ---------- at the first batch: driven by hand ----------
def _fails(exc, match, cb, x, y, loss_func=None, c=None):
    "`cb` raises `exc` (message matching `match`) in before_batch; the batch, the learner's xb/yb and the loss are untouched"
    lf = loss_func if loss_func is not None else nn.CrossEntropyLoss()
    red = getattr(lf, 'reduction', None)
    x0, y0 = x.clone(), y.clone()
    with pytest.raises(exc, match=match) as e: step(cb, (x,), (y,), loss_func=lf, c=c)
    assert not isinstance(e.value, (RuntimeError, IndexError))
    assert torch.equal(x, x0) and torch.equal(y, y0)
    assert torch.equal(cb.learn.xb[0], x0) and torch.equal(cb.learn.yb[0], y0)  # the learner's batch was not replaced
    assert cb.learn.loss_func is lf and getattr(lf, 'reduction', None) == red
    return e.value


@pytest.mark.parametrize('cls', [CutMix, CutMixUp, Cutout], ids=ids)
@pytest.mark.parametrize('shape', [(8, 5), (8,)], ids=['(bs,F)', '(bs,)'])
def test_cut_on_inputs_without_spatial_dims(cls, shape):
    _fails(ValueError, 'spatial', cls(), torch.randn(*shape), torch.randint(0, 3, (8,)))


def test_mixup_works_without_spatial_dims():
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    for cb in (MixUp(seed=0), CutMixUp(switch_prob=1., seed=0)):
        learn = step(cb, (x,), (y,), pred=torch.randn(8, 3))
        prm = type(cb)(seed=0, **({'switch_prob': 1.} if isinstance(cb, CutMixUp) else {})).draw(x)
        assert torch.allclose(learn.xb[0], prm.lam[:, None] * x + (1 - prm.lam[:, None]) * x[prm.perm], atol=1e-6)


@pytest.mark.parametrize('cls', [MixUp, CutMixUp], ids=ids)
def test_blending_integer_images(cls):
    _fails(TypeError, 'floating-point', cls(), torch.randint(0, 255, (6, 3, 8, 8), dtype=torch.uint8), torch.randint(0, 3, (6,)))


@pytest.mark.parametrize('fill', [0.5, 'normal'])
def test_cutout_non_integer_fill_on_integer_images(fill):
    _fails(TypeError, '`fill`', Cutout(fill=fill), torch.randint(0, 255, (6, 3, 8, 8), dtype=torch.uint8), torch.randint(0, 3, (6,)))


@pytest.mark.parametrize('length,shape', [(33, (32, 32)), (9, (8, 40)), (41, (40, 8))])
def test_cutout_length_larger_than_the_image(length, shape):
    _fails(ValueError, '`length`', Cutout(length=length), torch.randn(4, 3, *shape), torch.randint(0, 3, (4,)))


class NoReduction(nn.Module):
    "A loss with no `reduction` attribute or argument"
    def forward(self, pred, y): return F.cross_entropy(pred, y)

def plain_loss(pred, y): return F.cross_entropy(pred, y)


@pytest.mark.parametrize('lf', [NoReduction(), plain_loss, lambda p, y: F.cross_entropy(p, y)], ids=['module', 'function', 'lambda'])
@pytest.mark.parametrize('cls', MIXERS, ids=ids)
def test_loss_without_reduction_with_integer_targets(cls, lf):
    _fails(TypeError, 'loss_func', cls(), torch.randn(6, 3, 8, 8), torch.randint(0, 3, (6,)), loss_func=lf)


@pytest.mark.parametrize('cls', MIXERS, ids=ids)
def test_loss_without_reduction_is_fine_with_float_targets(cls):
    x, y = torch.randn(6, 3, 8, 8), F.one_hot(torch.randint(0, 3, (6,)), 3).float()
    lf = lambda p, t: F.binary_cross_entropy_with_logits(p, t)
    learn = step(cls(seed=0), (x,), (y,), loss_func=lf, pred=torch.randn(6, 3))
    assert torch.isfinite(learn.loss_grad)


@pytest.mark.parametrize('cls', MIXERS, ids=ids)
def test_label_mode_with_class_indices_needs_n_classes(cls):
    _fails(ValueError, 'n_classes', cls(mix_target='label'), torch.randn(6, 3, 8, 8), torch.randint(0, 3, (6,)))


@pytest.mark.parametrize('cls', MIXERS, ids=ids)
def test_targets_that_do_not_match_the_batch(cls):
    x = torch.randn(6, 3, 8, 8)
    _fails(ValueError, 'batch size', cls(), x, torch.randint(0, 3, (5,)))
    _fails(ValueError, 'batch size', cls(), x, torch.tensor(2))


@pytest.mark.parametrize('cls', ALL, ids=ids)
def test_input_not_a_batch_tensor(cls):
    with pytest.raises(TypeError, match='xb'): step(cls(), (torch.tensor(1.),), (torch.tensor([1]),))
    with pytest.raises(TypeError, match='xb'): step(cls(), ([1., 2.],), (torch.tensor([1, 2]),))


@pytest.mark.parametrize('cls', ALL, ids=ids)
def test_schedules_returning_bad_values(cls):
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 3, (6,))
    _fails(ValueError, '`p`', cls(p=lambda pct: 1.5), x, y)
    _fails(TypeError, '`p`', cls(p=lambda pct: 'x'), x, y)
    if cls in (MixUp, CutMix): _fails(ValueError, '`alpha`', cls(alpha=lambda pct: -1.), x, y)
    if cls is CutMixUp: _fails(ValueError, '`switch_prob`', cls(switch_prob=lambda pct: 2.), x, y)


# ---------- at the start of fit, in the real loop ----------
@pytest.fixture(scope='module')
def row_dls(): return image_dls(get_x=get_row)                     # (bs, 6) inputs: no spatial dims


@pytest.mark.parametrize('aug', ['cutmix', 'cutmixup', 'cutout'])
def test_fit_with_cut_on_tabular_inputs_fails_first_and_changes_nothing(row_dls, aug):
    lf = nn.CrossEntropyLoss()
    model = CountForward(nn.Linear(6, 4))
    learn = getattr(make_learner(row_dls, model=model, loss_func=lf), aug)()
    cbs, w = list(learn.cbs), params(learn.model)
    with pytest.raises(ValueError, match='spatial'): quiet_fit(learn)
    eq(model.n, 0)                                                  # raised before any forward pass
    assert same_params(w, params(learn.model)) and learn.loss_func is lf and lf.reduction == 'mean'
    assert same_cbs(learn.cbs, cbs)
    learn.remove_mixaug().mixup()
    quiet_fit(learn)                                                # MixUp trains on them
    assert not same_params(w, params(learn.model))


def test_fit_with_a_loss_without_reduction_fails_before_the_forward_pass():
    model = CountForward(tiny_cnn())
    learn = make_learner(image_dls(), model=model, loss_func=plain_loss).cutmixup()
    w = params(learn.model)
    with pytest.raises(TypeError, match='loss_func'): quiet_fit(learn)
    eq(model.n, 0)
    assert same_params(w, params(learn.model)) and learn.loss_func is plain_loss


def test_fit_label_mode_without_classes_then_with_them():
    dls = image_dls()                                               # no `c` on these DataLoaders
    learn = make_learner(dls).mixup(mix_target='label')
    with pytest.raises(ValueError, match='n_classes'): quiet_fit(learn)
    dls.c = 4
    quiet_fit(learn)


def _u8_dls(): return image_dls(get_x=get_u8)

# (name, dls factory, model factory, aug, kwargs, loss, expected error, match): each case is bad from the first batch on,
# but the callback is scheduled off at pct_train=0 (a warm-up schedule of p or α, a common use)
WARMUP = [
    ('cutmix-tabular-p', lambda: image_dls(get_x=get_row), lambda: nn.Linear(6, 4), 'cutmix', dict(p=lambda pct: pct), None, ValueError, 'spatial'),
    ('cutmixup-tabular-alpha', lambda: image_dls(get_x=get_row), lambda: nn.Linear(6, 4), 'cutmixup',
     dict(mixup_alpha=lambda pct: pct, cutmix_alpha=lambda pct: pct), None, ValueError, 'spatial'),
    ('cutout-tabular-p', lambda: image_dls(get_x=get_row), lambda: nn.Linear(6, 4), 'cutout', dict(p=lambda pct: pct), None, ValueError, 'spatial'),
    ('mixup-uint8-p', _u8_dls, tiny_cnn, 'mixup', dict(p=lambda pct: pct), None, TypeError, 'floating-point'),
    ('mixup-no-reduction-p', image_dls, tiny_cnn, 'mixup', dict(p=lambda pct: pct), plain_loss, TypeError, 'loss_func'),
    ('cutmix-no-reduction-alpha', image_dls, tiny_cnn, 'cutmix', dict(alpha=lambda pct: pct), plain_loss, TypeError, 'loss_func'),
    ('mixup-label-no-classes-p', image_dls, tiny_cnn, 'mixup', dict(mix_target='label', p=lambda pct: pct), None, ValueError, 'n_classes'),
]

@pytest.mark.parametrize('name,mk_dls,mk_model,aug,kw,lf,exc,match', WARMUP, ids=[w[0] for w in WARMUP])
def test_bad_input_caught_at_fit_start_even_when_scheduled_off_at_first(name, mk_dls, mk_model, aug, kw, lf, exc, match):
    model = CountForward(mk_model())
    learn = getattr(make_learner(mk_dls(), model=model, loss_func=lf), aug)(**kw)
    w = params(learn.model)
    with pytest.raises(exc, match=match): quiet_fit(learn)
    eq(model.n, 0)                                                  # before any forward pass...
    assert same_params(w, params(learn.model))                      # ...so no step changed the weights
