"""The structure stays readable: no import cycles inside linesight (type-only imports count: a reader follows
them too), no long module in export/ or daemon/ without a written reason, and the README's module map
names every module that exists and nothing that does not."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"linesight": "cli", "linesight.daemon": "daemon", "linesight.trainer": "trainer",
            "linesight.export": "export", "linesight.config": "config"}
MAX_LINES = 400
LONG_REASON = "Longer than 400 lines because"


def modules() -> dict[str, Path]:
    out = {}
    for pkg, folder in PACKAGES.items():
        for p in (ROOT / folder).rglob("*.py"):
            parts = [x for x in p.relative_to(ROOT / folder).with_suffix("").parts if x != "__init__"]
            out[".".join([pkg, *parts])] = p
    return out


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    graph = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    deps.add(full if full in mods else node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d in mods and d != name and not name.startswith(d + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(import_graph(modules())) == []


def test_long_modules_in_export_and_daemon_say_why():
    long = []
    for folder in ("export", "daemon"):
        for p in sorted((ROOT / folder).rglob("*.py")):
            n = len(p.read_text().splitlines())
            doc = ast.get_docstring(ast.parse(p.read_text())) or ""
            if n > MAX_LINES and LONG_REASON not in doc:
                long.append(f"{p.relative_to(ROOT)}: {n} lines")
    assert not long, f"split these or write '{LONG_REASON} ...' in their docstring: {long}"


def test_readme_module_map_matches_the_tree():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Module map"):]
    section = section[:section.index("\n## ", 4)] if "\n## " in section[4:] else section
    named = set(re.findall(r"`((?:cli|daemon|export|trainer|config)/[\w/]+(?:\.py|/))`", section))
    on_disk = set()
    for folder in ("cli", "daemon", "export", "trainer", "config"):
        for p in (ROOT / folder).rglob("*.py"):
            rel = p.relative_to(ROOT)
            if p.name == "__init__.py":
                if p.parent != ROOT / folder:
                    on_disk.add(f"{rel.parent}/")
            elif p.parent == ROOT / folder or not (p.parent / "__init__.py").exists() or p.parent.name in (
                    "sources", "sinks"):
                on_disk.add(str(rel))
    missing = sorted(on_disk - named)
    stale = sorted(n for n in named if not (ROOT / n).exists())
    assert not missing and not stale, f"README module map: add {missing}, remove {stale}"
