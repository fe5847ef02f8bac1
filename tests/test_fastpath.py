"The fast path (issue #6) changes nothing a user sees: types, metadata, layouts and exact values are those of the slow formulas."
import pytest, torch
from torch import Tensor
from fastcore.test import test_eq as eq
from fastai.torch_core import TensorImage, TensorCategory, TensorMask
from fastai_mixaug.core import (sample_mix, sample_holes, box_mask, mix_batch, erase_batch, mix_weight, mix_input,
                                 mix_loss, _gather, _plain, _retype)

SHAPES = [(5,), (6, 7), (3, 4, 5)]

@pytest.mark.parametrize('sp', SHAPES)
@pytest.mark.parametrize('k', [1, 3])
def test_box_mask_float_and_bool_agree_with_a_per_pixel_reference(sp, k):
    g = torch.Generator().manual_seed(len(sp) * 10 + k)
    lo, hi = sample_holes(4, sp, n_holes=k, length=2, generator=g)
    ref = torch.zeros(4, 1, *sp, dtype=torch.bool)
    for b in range(4):
        for j in range(k):
            ref[(b, 0, *[slice(int(l), int(h)) for l, h in zip(lo[b, j], hi[b, j])])] = True
    eq(box_mask(lo, hi, sp), ref)
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        m = box_mask(lo, hi, sp, dt)
        eq(m.dtype, dt); eq(m, ref.to(dt))

@pytest.mark.parametrize('switch_prob', [0., 0.5, 1.])
@pytest.mark.parametrize('p', [1., 0.6])
def test_weight_is_the_where_formula_exactly(switch_prob, p):
    prm = sample_mix(16, (6, 6), switch_prob=switch_prob, p=p, generator=torch.Generator().manual_seed(3))
    w = mix_weight(prm)
    lam = prm.lam.view(-1, 1, 1, 1)
    if prm.lo is None: eq(w, lam); return
    inside = box_mask(prm.lo, prm.hi, (6, 6))
    ref = torch.where(inside, 0., torch.where(prm.cut.view(-1, 1, 1, 1), 1., lam))
    eq(w, ref)

def test_gather_is_indexing_and_keeps_layout():
    x = torch.randn(6, 3, 5, 5).to(memory_format=torch.channels_last)
    perm = torch.randperm(6)
    g = _gather(x, perm)
    eq(g, x[perm]); assert g.is_contiguous(memory_format=torch.channels_last)
    xr = torch.randn(4, 3, requires_grad=True)                   # autograd still works (falls back to indexing)
    _gather(xr, torch.tensor([1, 0, 3, 2])).sum().backward()
    eq(xr.grad, torch.ones(4, 3))

def test_uint8_paste_is_exact():
    x = torch.randint(0, 256, (8, 3, 9, 9), dtype=torch.uint8)
    prm = sample_mix(8, (9, 9), switch_prob=0., generator=torch.Generator().manual_seed(0))
    (out,), _, _, _ = mix_batch((x,), (torch.arange(8),), prm)
    inside = box_mask(prm.lo, prm.hi, (9, 9))
    eq(out.dtype, torch.uint8); eq(out, torch.where(inside, x[prm.perm], x))

def test_fastai_types_and_metadata_come_back():
    x = TensorImage(torch.randn(6, 3, 8, 8)); x.img_size = (8, 8)
    y = TensorCategory(torch.arange(6)); m = TensorMask(torch.randint(0, 4, (6, 8, 8)))
    for sp in (0., 0.5, 1.):
        prm = sample_mix(6, (8, 8), switch_prob=sp, generator=torch.Generator().manual_seed(1))
        (xo,), (yo, mo), yb1, lam = mix_batch((x,), (y, m), prm)
        eq(type(xo), TensorImage); eq(xo.img_size, (8, 8))
        eq(type(yo), TensorCategory); eq(type(mo), TensorMask)
        assert all(type(t) in (TensorCategory, TensorMask) for t in (yb1 or ()))
        # the same numbers as on plain tensors
        (xp,), (yp, mp), _, _ = mix_batch((_plain(x),), (_plain(y), _plain(m)), prm)
        eq(type(xp), Tensor); eq(_plain(xo), xp); eq(_plain(mo), mp)
    lo, hi = sample_holes(6, (8, 8), generator=torch.Generator().manual_seed(2))
    (xo,), (mo,) = erase_batch((x,), (m,), lo, hi, mask_fill=255)
    eq(type(xo), TensorImage); eq(xo.img_size, (8, 8)); eq(type(mo), TensorMask)
    eq(_plain(xo), torch.where(box_mask(lo, hi, (8, 8)), 0., _plain(x)))

def test_loss_type_follows_the_loss_functions_output():
    pred, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    lf = torch.nn.CrossEntropyLoss()
    out = mix_loss(lf, pred, (y,), (y.flip(0),), torch.tensor([1., .5, .25, 0.]))
    eq(type(out), Tensor)
    eq(type(_retype(out, TensorImage(torch.zeros(1)))), TensorImage)

@pytest.mark.parametrize('switch_prob', [0., 0.5, 1.])
def test_draw_and_apply_cost_a_bounded_number_of_ops(switch_prob):
    "No op count that grows with the batch: the same number of torch ops at bs=4 and bs=64 (no loop over samples)"
    from torch.profiler import profile, ProfilerActivity
    def count(bs):
        x, y = torch.randn(bs, 3, 8, 8), torch.randint(0, 3, (bs,))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            mix_batch((x,), (y,), sample_mix(bs, (8, 8), switch_prob=switch_prob))
        return sum(e.name.startswith('aten::') for e in prof.events())
    eq(count(4), count(64))
