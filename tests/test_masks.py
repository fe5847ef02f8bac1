"FMix and ResizeMix: λ is the share kept, pastes come from one partner, FMix masks are per-sample blobs, ResizeMix pastes F.interpolate's resize."
import math, pytest, torch, torch.nn as nn, torch.nn.functional as F
from fastcore.test import test_eq as eq, test_close as close
from fastai.losses import CrossEntropyLossFlat
from fastai_mixaug.core import mix_batch, box_mask, paste_resized, mix_weight
from fastai_mixaug.masks import sample_fmix, sample_resizemix, fmix_masks
from fastai_mixaug.callback import FMix, ResizeMix
from helpers import one_thread, seeded, step, constants  # noqa: F401 (one_thread, seeded: autouse fixtures)

SHAPES = [(48,), (16, 20), (6, 8, 10)]
gen = lambda s: torch.Generator().manual_seed(s)


def box_of(m):
    "The bounding box of a boolean mask, as a mask"
    idx = m.nonzero()
    out = torch.zeros_like(m)
    if len(idx): out[tuple(slice(int(a), int(b) + 1) for a, b in zip(idx.min(0).values, idx.max(0).values))] = True
    return out


# ------------------------------------------------------------------------------------------------ FMix
@pytest.mark.parametrize('sp', SHAPES, ids=str)
@pytest.mark.parametrize('mode', ['elem', 'batch'])
@pytest.mark.parametrize('p', [1., .6])
def test_fmix_lambda_is_the_share_kept_and_pixels_come_from_one_partner(sp, mode, p):
    bs = 9
    x = constants(bs, 2, *sp)
    prm = sample_fmix(bs, sp, p=p, mode=mode, generator=gen(len(sp)))
    (out,), _, _, _ = mix_batch((x,), (torch.arange(bs),), prm)
    own, other = (out == x), (out == x[prm.perm])
    assert (own | other).all()                                            # a paste: every pixel is one of the two
    moved = prm.perm != torch.arange(bs)
    eq(own.float().mean(tuple(range(1, out.ndim)))[moved], prm.lam[moved])  # λ: exactly the share kept
    eq((~prm.mask).flatten(1).float().mean(1), prm.lam)
    eq(prm.mask.shape, (bs, 1, *sp))
    if mode == 'batch': eq(prm.mask, prm.mask[:1].expand_as(prm.mask)); eq(prm.lam, prm.lam[:1].expand(bs))


def test_fmix_keeps_round_lambda_n_pixels_and_the_top_of_its_image():
    lam = torch.tensor([0., .1, .25, .5, .77, 1.])
    m = fmix_masks(lam, (20, 30), generator=gen(0))
    eq((~m).flatten(1).sum(1), (lam * 600).round().long())


def test_fmix_masks_differ_between_samples_and_are_not_rectangles():
    prm = sample_fmix(32, (32, 32), generator=gen(1))
    m = prm.mask[:, 0]
    mixed = (prm.lam > .05) & (prm.lam < .95)
    not_box = [not torch.equal(m[i], box_of(m[i])) and not torch.equal(~m[i], box_of(~m[i])) for i in range(32) if mixed[i]]
    assert sum(not_box) >= 0.8 * len(not_box) and len(not_box) >= 20
    assert len({tuple(mi.flatten().tolist()) for mi in m}) == 32           # all different


def test_fmix_lambda_follows_beta():
    lam = torch.cat([sample_fmix(64, (16, 16), alpha=a, generator=gen(i)).lam for i, a in enumerate([.5] * 40)])
    close(lam.mean(), torch.tensor(.5), eps=.02)
    close(lam.var(), torch.tensor(1 / (4 * (2 * .5 + 1))), eps=.01)       # Var Beta(α, α) = 1/(4(2α+1))


def test_fmix_larger_decay_power_gives_smoother_masks():
    def edges(dp):
        m = sample_fmix(64, (32, 32), decay_power=dp, generator=gen(2)).mask[:, 0].float()
        return ((m[:, 1:] != m[:, :-1]).float().mean() + (m[:, :, 1:] != m[:, :, :-1]).float().mean()).item()
    assert edges(5.) < edges(3.) < edges(1.)


def test_fmix_segmentation_mask_pasted_through_the_same_mask():
    bs = 6
    x, msk = torch.randn(bs, 3, 12, 12), torch.randint(0, 5, (bs, 12, 12))
    learn = step(FMix(seed=0), (x,), (msk,), loss_func=CrossEntropyLossFlat(axis=1))
    prm = FMix(seed=0).draw(x)
    eq(learn.yb[0], torch.where(prm.mask[:, 0], msk[prm.perm], msk))
    eq(learn.xb[0], torch.where(prm.mask, x[prm.perm], x))


def test_fmix_uint8_images_pasted_exactly():
    x = torch.randint(0, 256, (6, 3, 10, 10), dtype=torch.uint8)
    prm = sample_fmix(6, (10, 10), generator=gen(3))
    (out,), _, _, _ = mix_batch((x,), (torch.arange(6),), prm)
    eq(out.dtype, torch.uint8); eq(out, torch.where(prm.mask, x[prm.perm], x))


def test_fmix_bad_parameters():
    for v in (0, -1., float('inf')):
        with pytest.raises(ValueError, match='`decay_power`'): FMix(decay_power=v)
    with pytest.raises(TypeError, match='`decay_power`'): FMix(decay_power='3')
    with pytest.raises(ValueError, match='`alpha`'): FMix(alpha=0)
    with pytest.raises(ValueError, match='spatial dimensions'): sample_fmix(4, ())


# ------------------------------------------------------------------------------------------------ ResizeMix
@pytest.mark.parametrize('mode', ['elem', 'batch'])
def test_resizemix_paste_is_the_partner_resized_as_f_interpolate(mode):
    bs, H, W = 7, 24, 36
    x = torch.randn(bs, 3, H, W, generator=gen(4))
    prm = sample_resizemix(bs, (H, W), mode=mode, generator=gen(5))
    (out,), _, _, _ = mix_batch((x,), (torch.arange(bs),), prm)
    inside = box_mask(prm.lo, prm.hi, (H, W)).expand_as(x)
    eq(out[~inside], x[~inside])                                          # outside the paste: bit for bit its own
    for b in range(bs):
        (t, l), (bt, r) = prm.lo[b].tolist(), prm.hi[b].tolist()
        if bt == t: continue
        want = F.interpolate(x[prm.perm[b]][None], size=(bt - t, r - l), mode='bilinear', align_corners=False)[0]
        close(out[b, :, t:bt, l:r], want, eps=1e-5)
    side = (prm.hi - prm.lo).float()
    tau = side / torch.tensor([H, W])
    moved = prm.perm != torch.arange(bs)
    assert ((tau >= .1 - 1 / H) & (tau <= .8 + 1 / H))[moved].all()          # round(τ·S), τ ~ U(0.1, 0.8)
    if mode == 'elem': eq(side[~moved], torch.zeros_like(side[~moved]))       # paired with itself: no paste
    eq(prm.lam, (H * W - (prm.hi - prm.lo).prod(1)) / (H * W))          # λ: 1 - pasted / all, exactly


def test_resizemix_boxes_inside_the_image_with_one_scale_for_both_sides():
    H, W = 40, 60
    prm = sample_resizemix(500, (H, W), scale=(.2, .6), generator=gen(6))
    assert (prm.lo >= 0).all() and (prm.hi[:, 0] <= H).all() and (prm.hi[:, 1] <= W).all()
    side = (prm.hi - prm.lo).float()
    # one τ per sample: both sides are round(τ·S) of the same τ
    tau_lo, tau_hi = (side - .5) / torch.tensor([H, W]), (side + .5) / torch.tensor([H, W])
    assert (torch.maximum(tau_lo[:, 0], tau_lo[:, 1]) <= torch.minimum(tau_hi[:, 0], tau_hi[:, 1]) + 1e-6).all()
    assert side[:, 0].min() <= .25 * H and side[:, 0].max() >= .55 * H      # the range is covered
    starts = prm.lo[:, 1].float() / (W - side[:, 1]).clamp_min(1)            # position uniform over the free room
    close(starts.mean(), torch.tensor(.5), eps=.05)


@pytest.mark.parametrize('sp,mode', [((50,), 'linear'), ((9, 12, 15), 'trilinear')], ids=['1d', '3d'])
def test_resizemix_in_1d_and_3d(sp, mode):
    bs = 5
    x = torch.randn(bs, 2, *sp, generator=gen(7))
    prm = sample_resizemix(bs, sp, scale=(.3, .9), generator=gen(8))
    (out,), _, _, _ = mix_batch((x,), (torch.arange(bs),), prm)
    for b in range(bs):
        if prm.perm[b] == b: continue
        box = tuple(slice(int(l), int(h)) for l, h in zip(prm.lo[b], prm.hi[b]))
        want = F.interpolate(x[prm.perm[b]][None], size=tuple((prm.hi[b] - prm.lo[b]).tolist()), mode=mode, align_corners=False)[0]
        close(out[b][(slice(None), *box)], want, eps=1e-5)


def test_resizemix_masks_resized_nearest_and_pasted_through_the_same_box():
    bs, H, W = 6, 20, 20
    x, msk = torch.randn(bs, 3, H, W, generator=gen(9)), torch.randint(0, 7, (bs, H, W), generator=gen(10))
    learn = step(ResizeMix(seed=1), (x,), (msk,), loss_func=CrossEntropyLossFlat(axis=1))
    prm = ResizeMix(seed=1).draw(x)
    y = learn.yb[0]
    eq(y.dtype, msk.dtype)
    for b in range(bs):
        (t, l), (bt, r) = prm.lo[b].tolist(), prm.hi[b].tolist()
        want = msk.clone()[b]
        if bt > t: want[t:bt, l:r] = F.interpolate(msk[prm.perm[b]][None, None].float(), size=(bt - t, r - l), mode='nearest')[0, 0].long()
        eq(y[b], want)


def test_resizemix_heatmap_targets_resized_like_the_image():
    bs, H, W = 4, 16, 16
    x, hm = torch.randn(bs, 3, H, W, generator=gen(11)), torch.rand(bs, H, W, generator=gen(12))
    prm = sample_resizemix(bs, (H, W), generator=gen(13))
    _, (y,), _, lam = mix_batch((x,), (hm,), prm)
    assert lam is None
    for b in range(bs):
        (t, l), (bt, r) = prm.lo[b].tolist(), prm.hi[b].tolist()
        if bt == t: continue
        close(y[b, t:bt, l:r], F.interpolate(hm[prm.perm[b]][None, None], size=(bt - t, r - l), mode='bilinear')[0, 0], eps=1e-5)


def test_resizemix_uint8_images_rounded():
    x = torch.randint(0, 256, (5, 3, 18, 18), dtype=torch.uint8, generator=gen(14))
    prm = sample_resizemix(5, (18, 18), generator=gen(15))
    (out,), _, _, _ = mix_batch((x,), (torch.arange(5),), prm)
    eq(out.dtype, torch.uint8)
    (ref,), _, _, _ = mix_batch((x.float(),), (torch.arange(5),), prm)
    eq(out, ref.round().clamp(0, 255).to(torch.uint8))


def test_paste_resized_keeps_channels_last_and_low_precision():
    x = torch.randn(4, 3, 12, 12).to(memory_format=torch.channels_last)
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        learn = step(ResizeMix(seed=2), (x.to(dt),), (torch.arange(4),))
        eq(learn.xb[0].dtype, dt)
        assert learn.xb[0].is_contiguous(memory_format=torch.channels_last)


def test_resizemix_bad_parameters():
    for v in [(.5, .2), (0., .5), (.2, 1.), (-.1, .5), (.2, 1.5)]:
        with pytest.raises(ValueError, match='`scale`'): ResizeMix(scale=v)
    for v in [.5, (.1,), (.1, .2, .3), ('a', .5), None]:
        with pytest.raises(TypeError, match='`scale`'): ResizeMix(scale=v)
    ResizeMix(scale=(.4, .4))                                             # a fixed scale is fine
    with pytest.raises(ValueError, match='spatial dimensions'):
        step(ResizeMix(), (torch.randn(4, 6),), (torch.arange(4),))


def test_paste_resized_in_chunks_is_the_one_piece_result():
    "Big CPU batches are resized in chunks of about 4 MB (no page faults, cache-hot): the same bits as in one piece, a partial last chunk included"
    from fastai_mixaug.core import _cpu_chunk, _resize_into
    x = torch.randn(23, 3, 224, 224, generator=gen(9))                    # 13.8 MB: chunks of 6 samples, the last of 5
    assert _cpu_chunk(x) == 6
    prm = sample_resizemix(23, (224, 224), generator=gen(10))
    eq(paste_resized(x, prm.perm, prm.lo, prm.hi), _resize_into(x, prm.perm, prm.lo, prm.hi, 'bilinear', []))
    m = torch.randint(0, 9, (23, 224, 224), generator=gen(11))            # int64 masks, nearest
    assert _cpu_chunk(m) < 23
    eq(paste_resized(m, prm.perm, prm.lo, prm.hi, 'nearest'), _resize_into(m, prm.perm, prm.lo, prm.hi, 'nearest', []))
    v = torch.randn(3, 2, 24, 180, 180, generator=gen(12))                # volumes: 3-D, one sample per chunk
    pv = sample_resizemix(3, (24, 180, 180), generator=gen(13))
    assert _cpu_chunk(v) == 1
    eq(paste_resized(v, pv.perm, pv.lo, pv.hi), _resize_into(v, pv.perm, pv.lo, pv.hi, 'bilinear', []))
    (out,), _, _, _ = mix_batch((x,), (torch.arange(23),), prm)           # through the mix: outside the boxes, the sample's own bits
    inside = box_mask(prm.lo, prm.hi, (224, 224)).expand_as(x)
    eq(out[~inside], x[~inside])
    assert _cpu_chunk(x[:8]) == 8                                         # under 8 MB: one piece
    assert _cpu_chunk(x.contiguous(memory_format=torch.channels_last)) == 23   # channels_last: one piece, layout kept
