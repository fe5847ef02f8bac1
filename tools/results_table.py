"""Print the compact results table of the README and docs/results.md from a study's `cells.csv`.

One row per augmentation, per cell (train images × epochs): the paired error difference to none in points with its
95% interval over seeds, how many seeds were better, and the ECE. Every number comes from `cells.csv`, which
`fastai-mixaug study ... --report` writes from `runs.csv`.

    python tools/results_table.py results/cifar10/cells.csv
"""
import argparse, csv, math

NAMES = dict(none='none', mixup='MixUp', cutmix='CutMix', cutout='Cutout', cutmixup='CutMixUp', fmix='FMix',
             resizemix='ResizeMix', manifold_mixup='Manifold Mixup', randommix='RandomMix')

def pts(v:float, sign:bool=True) -> str:
    "`v` (a fraction) in points, one decimal (two where one would read 0.0), with a real minus sign"
    d = 2 if v and round(abs(v) * 100, 1) == 0 else 1
    return format(v * 100, f'+.{d}f' if sign else f'.{d}f').replace('-', '−')

def cell(c:dict|None, compact:bool=False) -> tuple[str, str]:
    "The (error vs none, ECE) entries of one cell's row; `compact`: without the count of seeds better, none's error alone"
    if c is None: return ('' if compact else 'not run'), ''
    ece = pts(float(c['ece']), sign=False)
    if c['aug'] == 'none':
        n = int(c['n_seeds'])
        err = pts(float(c['error']), sign=False)
        return (err if compact else f"{err}% error ({n} seed{'s' if n > 1 else ''})"), ece
    n = int(c['n_pairs'])
    if not n: return 'no paired none run', ece
    lo, hi = float(c['vs_none_lo']), float(c['vs_none_hi'])
    ci = '' if math.isnan(lo) else f" [{pts(lo)}, {pts(hi)}]"
    s = f"{pts(float(c['vs_none']))}{ci}" + ((' (1 seed)' if n == 1 else '') if compact else f" ({c['better']}/{n} better)")
    return (f"**{s}**" if not math.isnan(lo) and (hi < 0 or lo > 0) else s), ece

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('cells', help="a study's cells.csv")
    p.add_argument('--compact', action='store_true', help="the README's: no count of seeds better, none's error alone, blank where not run")
    args = p.parse_args()
    rows = list(csv.DictReader(open(args.cells)))
    keys = list(dict.fromkeys((int(r['size']), int(r['epochs'])) for r in rows))
    augs = list(dict.fromkeys(r['aug'] for r in rows))
    at = {(int(r['size']), int(r['epochs']), r['aug']): r for r in rows}
    head = (['error vs none, points [95% CI]'] + [h for s, e in keys for h in (f"{e} epochs", "ECE %")] if args.compact else
            ['augmentation'] + [h for s, e in keys for h in (f"{s:,} × {e} ep: error vs none, points [95% CI]", "ECE %")])
    print('| ' + ' | '.join(head) + ' |'); print('|' + '---|' * len(head))
    for a in augs:
        name = 'none (error %)' if args.compact and a == 'none' else NAMES.get(a, a)
        print(f"| {name} | " + ' | '.join(x for s, e in keys for x in cell(at.get((s, e, a)), args.compact)) + ' |')

if __name__ == '__main__': main()
