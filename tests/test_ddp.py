"Multi-process training: 2 CPU processes (gloo) under fastai's `learn.distrib_ctx()`, launched with `torchrun`, one run per callback."
import math, os, subprocess, sys
from pathlib import Path
import pytest, torch
from helpers import ONE_LINERS

pytest.importorskip('accelerate')                      # fastai's distrib_ctx needs it (in the dev extra)
pytestmark = [pytest.mark.slow, pytest.mark.ci]      # two torchrun processes: about a minute on 2 cores, in the first test
AUGS = ONE_LINERS
SEED, N_BATCHES, WORLD = 42, 2, 2
SCRIPT = Path(__file__).parent/'ddp_train.py'


@pytest.fixture(scope='module')
def ranks(tmp_path_factory):
    "Launch tests/ddp_train.py on 2 processes; return each rank's results"
    out = tmp_path_factory.mktemp('ddp')
    # CPU processes on gloo, even where a GPU is present (2 ranks cannot share one GPU under NCCL)
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg', 'CUDA_VISIBLE_DEVICES': ''}
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={WORLD}', str(SCRIPT), str(out), *AUGS]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    files = sorted(out.glob('rank*.pt'))
    assert [f.name for f in files] == [f'rank{i}.pt' for i in range(WORLD)]     # both ranks finished
    res = [torch.load(f, weights_only=False) for f in files]
    assert [(d['rank'], d['world']) for d in res] == [(i, WORLD) for i in range(WORLD)]
    return res


@pytest.mark.long
@pytest.mark.parametrize('aug', AUGS)
def test_trains_on_both_ranks_and_weights_agree(ranks, aug):
    r0, r1 = ranks[0][aug], ranks[1][aug]
    assert r0['backend'] == r1['backend'] == 'gloo'
    assert r0['model_type'] == r1['model_type'] == 'Sequential'         # DDP wrapper taken off after the context
    for r in (r0, r1):
        assert len(r['recs']) == N_BATCHES
        assert all(math.isfinite(b['loss']) for b in r['recs'])
        assert r['loss_func_same']                                       # learn.loss_func is the user's object
        assert all(math.isfinite(v) for v in r['valid'])
    assert not torch.equal(r0['w0'], r0['weights'])                      # it trained
    assert torch.equal(r0['w0'], r1['w0'])
    assert torch.equal(r0['weights'], r1['weights'])                     # DDP kept the replicas identical
    assert torch.equal(r0['bn_stats'], r1['bn_stats'])
    assert r0['valid'] == r1['valid']                                    # metrics gathered over both shards


@pytest.mark.parametrize('aug', AUGS)
def test_each_rank_augments_its_own_shard(ranks, aug):
    for d in ranks:
        for b in d[aug]['recs']:
            bs = b['bs']
            assert bs == 32 and b['xb'][0].shape[0] == bs                # the local batch, not the global one
            if 'perm' in b: assert sorted(b['perm'].tolist()) == list(range(bs))   # partners from the local batch only
            # the batch the model saw is exactly the replay of this rank's own draw on this rank's own raw batch
            for x, xr in zip(b['xb_aug'], b['xb_replay']): assert torch.equal(x, xr)
            if b.get('hidden'): assert b['fired'] and torch.equal(b['xb_aug'][0], b['xb'][0])   # a hidden state mixed, not the inputs
            else: assert not torch.equal(b['xb_aug'][0], b['xb'][0])     # and it was augmented
    x0, x1 = ranks[0][aug]['recs'][0]['xb'][0], ranks[1][aug]['recs'][0]['xb'][0]
    flat0, flat1 = x0.flatten(1), x1.flatten(1)
    assert not (flat0[:, None] == flat1[None]).all(-1).any()             # the two shards share no image


@pytest.mark.parametrize('aug', AUGS)
def test_seeded_ranks_get_different_streams(ranks, aug):
    for d in ranks:
        r = d[aug]
        assert r['seed_used'] == SEED + d['rank']                        # rank offset
        want = torch.Generator().manual_seed(SEED + d['rank']).get_state()
        assert torch.equal(r['recs'][0]['gen_state'], want)              # the first draw came from that fresh stream
    key = 'lo' if aug == 'cutout' else 'lam'
    a, b = ranks[0][aug]['recs'][0][key], ranks[1][aug]['recs'][0][key]
    assert not torch.equal(a, b)


@pytest.mark.parametrize('aug', AUGS)
def test_nothing_printed_twice_and_show_on_rank0(ranks, aug):
    r0, r1 = ranks[0][aug], ranks[1][aug]
    assert r0['stdout'].count('train_loss') == 1                         # the progress table once, from rank 0
    assert r1['stdout'] == ''                                            # rank 1 prints nothing
    for r in (r0, r1): assert not [w for w in r['warnings'] if 'fastai_mixaug' in w]
    assert r0['show_in_ddp'] and r1['show_in_ddp']                       # called inside distrib_ctx, process group up
    assert (r0['n_figs'], r1['n_figs']) == (1, 0)                        # draws on rank 0 only
    assert r0['show_shape'] == r1['show_shape'] == (32, 1, 28, 28)       # and still returns the batch on every rank
