"The package's modules import one another without a cycle (#19: `cli` and `study` once imported each other)."
import ast
from pathlib import Path
import fastai_mixaug

PKG = Path(fastai_mixaug.__file__).parent

def _imports(path:Path) -> set:
    "The package's modules that `path` imports, at the top or inside a function"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ''
            if node.level: mod = 'fastai_mixaug' + ('.' + mod if mod else '')
            if mod == 'fastai_mixaug': out |= {f'fastai_mixaug.{a.name}' for a in node.names}
            elif mod.startswith('fastai_mixaug.'): out.add(mod)
        elif isinstance(node, ast.Import): out |= {a.name for a in node.names if a.name.startswith('fastai_mixaug.')}
    return out

def test_no_import_cycle():
    mods = {f'fastai_mixaug.{p.stem}': p for p in PKG.glob('*.py') if p.stem not in ('__init__', '_modidx')}
    graph = {m: {d for d in _imports(p) if d in mods and d != m} for m, p in mods.items()}
    assert graph['fastai_mixaug.cli'] >= {'fastai_mixaug.train', 'fastai_mixaug.study'}
    assert 'fastai_mixaug.cli' not in graph['fastai_mixaug.study'] and 'fastai_mixaug.study' not in graph['fastai_mixaug.train']
    state = {}
    def visit(m, path):
        if state.get(m) == 'done': return
        assert state.get(m) != 'open', f"import cycle: {' -> '.join(path + [m])}"
        state[m] = 'open'
        for d in sorted(graph[m]): visit(d, path + [m])
        state[m] = 'done'
    for m in sorted(graph): visit(m, [])
