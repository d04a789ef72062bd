#!/usr/bin/env python3
"""Lists the dependencies between ukload's modules and fails on a cycle.

A module is a source file under src/ (src/run.rs is `run`, src/mcp/stdio.rs is
`mcp::stdio`, src/mcp/mod.rs is `mcp`). An edge A -> B is any path written in
A that names B: `crate::b::...` (in `use` or inline), `super::...` and
`self::...` resolved against A. A path is attributed to the longest module it
names. A parent's edges to its own descendants are not counted: declaring and
re-exporting children is containment, not use. Test modules (`#[cfg(test)]`
blocks and `tests.rs` files) are skipped: tests may reach anywhere.

Usage: scripts/module-cycles.py [--list] [SRC_DIR]
  --list   print every edge (A -> B), one a line
Exit status: 0 no cycle, 1 a cycle (each strongly connected group is printed
with one path around it), 2 usage.
"""
import os
import re
import sys

PATH_RE = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+|::\{)")
USE_GROUP_RE = re.compile(r"\buse\s+(crate|super|self)::\{([^;]*)\};", re.S)


def module_of(src, path):
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return tuple(rel)


def strip_tests(text):
    """Drops `#[cfg(test)] mod x { ... }` blocks and comments."""
    text = re.sub(r"//[^\n]*", "", text)
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def resolve(mod, head, rest):
    if head == "crate":
        return list(rest)
    if head == "self":
        return list(mod) + list(rest)
    return list(mod[:-1]) + list(rest)  # super


def paths_in(text):
    for m in USE_GROUP_RE.finditer(text):
        head, body = m.group(1), m.group(2)
        depth, cur = 0, ""
        for ch in body + ",":
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            if ch == "," and depth == 0:
                first = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)*)", cur)
                if first:
                    yield head, first.group(1).split("::")
                cur = ""
            else:
                cur += ch
    for m in PATH_RE.finditer(text):
        if m.group(2) == "::{":
            continue
        yield m.group(1), m.group(2).strip(":").split("::")


def main(argv):
    listing = "--list" in argv
    args = [a for a in argv if a != "--list"]
    if len(args) > 1 or any(a.startswith("-") for a in args):
        print(__doc__, file=sys.stderr)
        return 2
    src = args[0] if args else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    files = {}
    for root, _, names in os.walk(src):
        for n in names:
            if not n.endswith(".rs") or n == "tests.rs":
                continue
            p = os.path.join(root, n)
            if os.path.dirname(p) == os.path.join(src, "bin") or p == os.path.join(src, "main.rs"):
                continue  # binaries use the library; nothing uses them
            files[module_of(src, p)] = p
    mods = set(files)
    edges = {m: set() for m in mods}
    for mod, p in files.items():
        with open(p, encoding="utf-8") as f:
            text = strip_tests(f.read())
        for head, rest in paths_in(text):
            target = resolve(mod, head, rest)
            best = None
            for k in range(len(target), 0, -1):
                if tuple(target[:k]) in mods:
                    best = tuple(target[:k])
                    break
            if best is None or best == mod or best == ():
                continue
            if best[: len(mod)] == mod:  # own descendant
                continue
            edges[mod].add(best)
    name = lambda m: "::".join(m) or "crate"
    if listing:
        for a in sorted(edges):
            for b in sorted(edges[a]):
                print(f"{name(a)} -> {name(b)}")
    # Tarjan's strongly connected components.
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(mods):
        if v not in index:
            visit(v)
    if not sccs:
        print(f"module-cycles: {len(mods)} modules, {sum(map(len, edges.values()))} edges, no cycle")
        return 0
    for comp in sccs:
        members = set(comp)
        # one cycle through the first member, by breadth-first search back to it
        start = comp[0]
        prev, queue, found = {start: None}, [start], None
        while queue and found is None:
            v = queue.pop(0)
            for w in sorted(edges[v]):
                if w == start:
                    found = v
                    break
                if w in members and w not in prev:
                    prev[w] = v
                    queue.append(w)
        path, v = [], found
        while v is not None:
            path.append(v)
            v = prev[v]
        path.reverse()
        print("module-cycles: cycle: " + " -> ".join(name(m) for m in path + [start]), file=sys.stderr)
        print("  (strongly connected: " + ", ".join(name(m) for m in comp) + ")", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
