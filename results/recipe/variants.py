"Each variant against its augmentation at the defaults, seed by seed (paired): writes variants.md next to this file."
import csv, sys
from pathlib import Path
from fastai_mixaug.study import paired_ci

here = Path(__file__).parent
runs = {(int(r['size']), int(r['epochs']), r['aug'], int(r['seed'])): float(r['error']) for r in csv.DictReader(open(here/'runs.csv'))}
cells = sorted({(s, e) for s, e, _, _ in runs}, key=lambda c: (c[1], c[0]))
variants = [a for a in dict.fromkeys(a for _, _, a, _ in runs) if ':' in a]
out = ["Each variant's validation error minus its augmentation's at the defaults, in points, paired by seed: mean "
       "[95% CI, paired t over seeds], seeds better / same / worse. Written by `python results/recipe/variants.py` from `runs.csv`.", "",
       "| variant | vs | " + " | ".join(f"{s:,} × {e} ep" for s, e in cells) + " |", "|---|---|" + "---|" * len(cells)]
for v in variants:
    base, row = v.split(':')[0], []
    for s, e in cells:
        seeds = sorted(k[3] for k in runs if k[:3] == (s, e, v) and (s, e, base, k[3]) in runs)
        d = [runs[(s, e, v, k)] - runs[(s, e, base, k)] for k in seeds]
        m, lo, hi = (x * 100 for x in paired_ci(d))
        row.append(f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}] {sum(x < 0 for x in d)}/{sum(x == 0 for x in d)}/{sum(x > 0 for x in d)}")
    out.append(f"| {v} | {base} | " + " | ".join(row) + " |")
(here/'variants.md').write_text('\n'.join(out) + '\n')
print('\n'.join(out))
