"""Train with each fastai_mixaug callback under `learn.distrib_ctx()` on CPU (gloo); launched by tests/test_ddp.py.

    torchrun --standalone --nproc_per_node=2 tests/ddp_train.py OUT_DIR [AUG ...]

Each rank writes OUT_DIR/rank{r}.pt with what tests/test_ddp.py checks: the batches before and after the
callbacks, the parameters replayed from the callback's generator, the losses, the final weights, the captured
stdout and the figures `show_mix_batch` drew.
"""
import contextlib, io, os, sys, warnings
from pathlib import Path
os.environ.setdefault('MPLBACKEND', 'Agg')
import torch, torch.distributed as dist
torch.set_num_threads(1)
import matplotlib.pyplot as plt
from fastai.callback.core import Callback, CancelTrainException
from fastai.distributed import DistributedDL
from fastai.torch_core import rank_distrib, num_distrib, set_seed
from fastai.vision.all import vision_learner, resnet18, accuracy
from fastai_mixaug.all import MixCallback, MixAugCallback, mix_batch, erase_batch
from fastai_mixaug.data import mnist_dls
import fastai_mixaug.show  # noqa: F401  (Learner.show_mix_batch)


# Test-only workaround, not a library patch: fastai's `DistributedDL._broadcast` moves the batch indices to CUDA
# (`LongTensor(t).cuda()`, written for NCCL), so it cannot run on a CPU-only machine. With the gloo backend the
# same broadcast works on a CPU tensor; on GPUs (NCCL) fastai's own method is used unchanged.
def _cpu_broadcast(self, t, rank):
    t = torch.tensor(t, dtype=torch.long)
    dist.broadcast(t, rank)
    return t.tolist()
if not torch.cuda.is_available(): DistributedDL._broadcast = _cpu_broadcast

N_BATCHES, SEED = 2, 42


class Spy(Callback):
    "Record each training batch before (order -1) and after (order 5) the augmentation, the replayed draw and the loss"
    order = -1
    def __init__(self, cb): self.cb, self.recs = cb, []
    def before_batch(self):
        if not self.training: return
        g = self.cb._rng(self.learn.xb[0].device)
        self.recs.append(dict(xb=[x.clone() for x in self.learn.xb], yb=[y.clone() for y in self.learn.yb],
                              gen_state=g.get_state(), bs=self.learn.xb[0].shape[0]))


class After(Callback):
    "Runs after the augmentation: store the augmented batch, replay the draw from the saved generator state"
    order = 5
    def __init__(self, spy): self.spy = spy
    def before_batch(self):
        if not self.training: return
        r, cb = self.spy.recs[-1], self.spy.cb
        r['xb_aug'], r['yb_aug'] = [x.clone() for x in self.learn.xb], [y.clone() for y in self.learn.yb]
        gen = torch.Generator(r['xb'][0].device); gen.set_state(r['gen_state'])
        saved, cb._gen = cb._gen, gen
        try:
            if isinstance(cb, MixCallback):
                prm = cb.draw(r['xb'][0])
                r['perm'], r['lam'], r['hidden'] = prm.perm.clone(), prm.lam.clone(), cb._sites is not None
                # a hidden state is mixed in the forward pass (ManifoldMixUp): the inputs are left as they are
                xs = tuple(r['xb']) if r['hidden'] else mix_batch(tuple(r['xb']), tuple(r['yb']), prm, cb.mix_target, self.dls.c)[0]
            else:
                lo, hi = cb.draw(r['xb'][0])
                r['lo'] = lo.clone()
                xs, ys = erase_batch(tuple(r['xb']), tuple(r['yb']), lo, hi, cb.fill, cb.mask_fill, gen)
        finally: cb._gen = saved
        r['xb_replay'] = [x.clone() for x in xs]
    def after_loss(self):
        if self.training: self.spy.recs[-1].update(loss=float(self.learn.loss), fired=getattr(self.spy.cb, '_fired', None))
    def after_batch(self):
        if self.training and self.iter >= N_BATCHES - 1: raise CancelTrainException()   # a few batches per epoch


def run(aug, dls):
    set_seed(0)                                    # same initial weights on every rank (DDP also broadcasts them)
    learn = vision_learner(dls, resnet18, pretrained=False, n_in=1, metrics=accuracy)
    lf, w0 = learn.loss_func, torch.cat([p.detach().flatten() for p in learn.model.parameters()])
    getattr(learn, aug)(seed=SEED)
    cb = next(c for c in learn.cbs if isinstance(c, MixAugCallback))
    spy = Spy(cb); after = After(spy); learn.add_cbs([spy, after])
    out = io.StringIO()
    with warnings.catch_warnings(record=True) as ws, contextlib.redirect_stdout(out):
        warnings.simplefilter('always')
        # SyncBatchNorm only runs on GPUs: on CPU keep plain BatchNorm (`sync_bn=False`); `cpu=True` makes Accelerate use gloo
        with learn.distrib_ctx(sync_bn=False, cpu=not torch.cuda.is_available()):
            learn.fit(1, 1e-3)
            learn.remove_cbs([spy, after])
            in_ddp = dist.is_initialized() and any(type(c).__name__ == 'DistributedTrainer' for c in learn.cbs)
            n_figs0 = len(plt.get_fignums())
            xb, yb = learn.show_mix_batch(n=4)           # inside the DDP context, every rank calls it
            n_figs = len(plt.get_fignums()) - n_figs0
        backend = dist.get_backend() if dist.is_initialized() else None
    return dict(backend=backend, w0=w0, recs=spy.recs, seed_used=cb._gen.initial_seed() if cb._gen is not None else None,
                weights=torch.cat([p.detach().flatten() for p in learn.model.parameters()]),
                bn_stats=torch.cat([b.flatten().float() for b in learn.model.buffers()]),
                loss_func_same=learn.loss_func is lf, model_type=type(learn.model).__name__,
                stdout=out.getvalue(), warnings=[f'{w.category.__name__}: {w.message} ({w.filename})' for w in ws],
                n_figs=n_figs, show_shape=tuple(xb[0].shape), show_in_ddp=in_ddp, valid=[float(v) for v in learn.recorder.values[-1]])


def main():
    from helpers import ONE_LINERS
    out_dir, augs = Path(sys.argv[1]), sys.argv[2:] or ONE_LINERS
    dls = mnist_dls(bs=32, n_valid=128, device='cpu')
    res = dict(rank=rank_distrib(), world=num_distrib())
    for aug in augs: res[aug] = run(aug, dls)
    torch.save(res, out_dir/f'rank{rank_distrib()}.pt')


if __name__ == '__main__': main()
