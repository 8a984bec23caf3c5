"""Floors of the import graph: the longest chain of imports among the project's own modules.

Run: `.venv/bin/python scripts/import_floors.py [package ...]` (default: evacuator monitors notifiers). Uses
grimp, the graph behind import-linter. Modules in one import cycle count as one floor (the graph is condensed
into its strongly connected parts), and each cycle is listed: a layered tree has none."""
import sys
from functools import lru_cache
import grimp

packages = sys.argv[1:] or ["evacuator", "monitors", "notifiers"]
graph = grimp.build_graph(*packages, cache_dir=None)
modules = sorted(graph.modules)
edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}
# Tarjan's strongly connected components
index, low, on, stack, sccs, counter = {}, {}, set(), [], [], [0]
sys.setrecursionlimit(100000)
def strong(v):
    index[v] = low[v] = counter[0]; counter[0] += 1; stack.append(v); on.add(v)
    for w in edges[v]:
        if w not in index:
            strong(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v: break
        sccs.append(tuple(sorted(comp)))
for m in modules:
    if m not in index: strong(m)
comp_of = {m: c for c in sccs for m in c}
cedges = {c: sorted({comp_of[w] for m in c for w in edges[m]} - {c}) for c in sccs}
@lru_cache(maxsize=None)
def longest(c):
    best = (c,)
    for n in cedges[c]:
        chain = (c,) + longest(n)
        if len(chain) > len(best): best = chain
    return best
chain = max((longest(c) for c in sccs), key=len)
cycles = [c for c in sccs if len(c) > 1]
print(f"modules: {len(modules)}, import edges: {sum(map(len, edges.values()))}, import cycles: {len(cycles)}")
for c in cycles: print("  cycle:", " <-> ".join(c))
print(f"floors (modules on the longest import chain): {len(chain)}")
print("  " + "\n  -> ".join(" <-> ".join(c) for c in chain))
