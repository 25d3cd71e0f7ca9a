"""The examples of README.md and docs/*.md as data, and the comparison of their output with a run's.

Covers: reading the fenced blocks of a Markdown page (``parse_page``), the ``<!-- doc-test: ... -->``
directives written just before a block, splitting a ``console`` block into commands and their
expected output (``console_steps``), the real ids that a doc's ids stand for (``learn_ids``,
``with_ids``), and comparing a doc's output with real output by its shape
(``normalise_line``, ``compare``). It runs nothing: ``tests/integration/test_docs.py`` runs the
blocks against a real local mesh; ``tests/unit/test_docblocks.py`` tests this module.

Conventions the docs follow (docs/DESIGN.md, "Docs that run"):

- Every fence names its language: ``python``, ``console`` (``$ `` lines are commands, the lines
  up to the next ``$ `` their output), ``bash``/``shell`` (commands only, no output shown),
  ``yaml`` (a cluster file, or a fragment of one), ``text`` (anything else: output, synopses).
- A ``text`` block right after a ``python`` block (nothing but blank lines between) is what the
  python block prints.
- In expected output, a line ``...`` stands for any number of lines.
- Directives, each in its own comment on the lines just before a block:
  ``skip (why)`` (not run; the test lists it with its reason), ``continue`` (a python block that
  goes on in the namespace of the page's previous python block), ``own-agents`` (the block starts
  and stops agents itself: it gets a cluster file of its own, nodes named as the local mesh's,
  no agent running), ``fresh`` (the mesh holds no block and no key when the block starts;
  with ``ray``, no reservation either), ``fields-of module.Class`` (a class shown in the doc has
  the named dataclass's fields), ``ray`` (the block runs against a real Ray cluster and a mesh
  named ``node1..3``), ``ssh`` (against a real sshd, with the cluster files the README's
  deployment steps name), ``file NAME`` (the block is written to ``NAME`` instead of running).
  What the last three give a block is in ``tests/integration/test_docs.py``.

Comparing by shape: ``normalise_line`` replaces what differs from run to run with placeholders
(block and reservation ids, checksums and other hex, Ray node ids (their short form may be all
digits), the master's name in ``master NAME: pressure`` (this machine's host name), absolute
paths, hex dump lines, every number,
so pids, sizes, times, ports, dates; a number after a hyphen only from three digits on, so node
names such as ``local-1`` stay while ``example-shared-10617`` does not) and reduces a rich table to its cells (box characters, column
widths and alignment gone; a header row keeps its own marker). Words, units, column names, the
number of columns and of lines stay, so a changed message, a missing column, ``MB`` become
``MiB``, or a row more or less is a difference, and a new pid or timing is not. One tolerance: a
size of plain bytes (``0 B``) matches a size in any unit, because a table's zero is a state, not
a format. Blank lines are not compared.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

LANGUAGES = {"python", "console", "bash", "shell", "sh", "yaml", "text", "json"}
ELLIPSIS = "..."

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\s]*)[^`]*$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*doc-test:\s*(?P<body>.*?)\s*-->\s*$")
_COMMENT = re.compile(r"^\s*<!--.*-->\s*$")


@dataclass
class Block:
    page: str          # the page's path relative to the checkout, e.g. "docs/python-api.md"
    line: int          # 1-based line of the opening fence
    lang: str          # "" when the fence names none
    text: str          # the block's content, its indentation removed
    directives: dict[str, str] = field(default_factory=dict)  # "skip" -> why, "continue" -> ""
    output: Block | None = None  # for a python block: the text block right after it
    end: int = 0       # 1-based line of the closing fence

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def first_content_line(self) -> int:
        return self.line + 1


def parse_directive(body: str) -> tuple[str, str]:
    """``skip (needs Ray)`` -> ("skip", "needs Ray"); ``continue`` -> ("continue", "")."""
    m = re.match(r"(?P<name>[\w-]+)\s*(?::\s*(?P<colon>.*)|\((?P<paren>.*)\)|(?P<rest>.*))$", body)
    if not m:
        raise ValueError(f"unreadable doc-test directive: {body!r}")
    arg = m.group("colon") or m.group("paren") or m.group("rest") or ""
    return m.group("name"), arg.strip()


def parse_markdown(text: str, page: str) -> list[Block]:
    """Every fenced block of ``text`` in order, with its directives; python blocks get their
    output block attached (it stays in the list too)."""
    lines = text.splitlines()
    blocks: list[Block] = []
    pending: dict[str, str] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        d = _DIRECTIVE.match(line)
        if d:
            name, arg = parse_directive(d.group("body"))
            pending[name] = arg
            i += 1
            continue
        m = _FENCE.match(line)
        if not m:
            if line.strip() and not _COMMENT.match(line):
                pending = {}  # a directive belongs to the block right after it
            i += 1
            continue
        indent, fence = m.group("indent"), m.group("fence")
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not (lines[j].strip().startswith(fence[0] * len(fence))
                                      and not lines[j].strip().strip(fence[0])):
            raw = lines[j]
            body.append(raw[len(indent):] if raw.startswith(indent) else raw.lstrip())
            j += 1
        blocks.append(Block(page, i + 1, m.group("info").lower(), "\n".join(body) + "\n",
                            pending, end=j + 1))
        pending = {}
        i = j + 1
    for prev, nxt in zip(blocks, blocks[1:]):
        gap = lines[prev.end:nxt.line - 1]
        if prev.lang == "python" and nxt.lang == "text" and not any(g.strip() for g in gap):
            prev.output = nxt
    return blocks


def parse_page(path: Path, root: Path) -> list[Block]:
    return parse_markdown(path.read_text(encoding="utf-8"), str(path.relative_to(root)))


@dataclass
class Step:
    command: str
    expected: list[str]
    line: int  # 1-based line of the command in the page


def console_steps(block: Block) -> list[Step]:
    """A console block's commands (``$ `` lines; a trailing backslash continues one) and the
    output under each."""
    steps: list[Step] = []
    lines = block.text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            command, start = line[2:], i
            while command.endswith("\\") and i + 1 < len(lines):
                i += 1
                command = command[:-1] + "\n" + lines[i]
            steps.append(Step(command, [], block.first_content_line + start))
        elif steps:
            steps[-1].expected.append(line)
        elif line.strip():
            raise ValueError(f"{block.id}: output before the first `$ ` command: {line!r}")
        i += 1
    return steps


# --- normalising ------------------------------------------------------------------------------

_BOX_ONLY = re.compile(r"^[\s━─┏┓┗┛┡┩┳┻╇┌┐└┘├┤┬┴┼╭╮╰╯═║╔╗╚╝╠╣╦╩╬]+$")
_CELL_SPLIT = re.compile(r"\s*[│┃║]\s*")
_SUBS: list[tuple[re.Pattern, str]] = [
    (re.compile(r"^[0-9a-f]{8}  (?:[0-9a-f]{2} {1,2})+\s*\|.*\|$"), "<hexdump>"),
    (re.compile(r"\bblock_\d+_\S+?_[0-9a-z]{4,}\b"), "<block-id>"),
    (re.compile(r"\balloc_\d+_\S+?_[0-9a-f]{4}\b"), "<alloc-id>"),
    (re.compile(r"\bempty_\d+\b"), "<empty-id>"),
    (re.compile(r"(?<=Ray node )[0-9a-f]{8,}\b"), "<hex>"),  # may be all digits
    (re.compile(r"^master \S+: pressure\b"), "master <host>: pressure"),  # this machine's name
    (re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{8,}\b"), "<hex>"),
    (re.compile(r"<embedded default>"), "<path>"),  # where a cluster file came from
    (re.compile(r"\b\d{4}-\d{2}-\d{2}\b"), "<date>"),
    (re.compile(r"\b\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?\b"), "<time>"),
    (re.compile(r"(?<![\w:/.])~?/(?=[\w.~-])[^\s'\"`(),;:]+"), "<path>"),
    (re.compile(r"(?<![\w-])\d+(?:,\d{3})*(?:\.\d+)?(?:e[-+]?\d+)?"), "N"),
    (re.compile(r"(?<=[A-Za-z]-)\d{3,}\b"), "N"),  # a pid in a name; local-1 stays a name
    (re.compile(r"\bN (?:[KMGTP]B)\b"), "<size>"),
    (re.compile(r"\bN (?:[KMGTP]iB)\b"), "<isize>"),
    (re.compile(r"\bN B\b"), "<bytes>"),
    (re.compile(r"[━─]{2,}"), "──"),
    (re.compile(r"\s+"), " "),
]


def normalise_line(line: str) -> str:
    """``line`` with what varies between runs replaced by placeholders (see the module doc)."""
    stripped = line.strip()
    if not stripped:
        return ""
    if _BOX_ONLY.match(stripped) and any(c not in "━─" for c in stripped):
        kind = ("top" if stripped[0] in "┏┌╭╔" else "bottom" if stripped[0] in "└┗╰╚"
                else "rule")
        return f"<table-{kind}>"
    if stripped[0] in "│┃║" and stripped[-1] in "│┃║":
        cells = _CELL_SPLIT.split(stripped.strip("│┃║ "))
        mark = "H|" if stripped[0] == "┃" else "|"
        return mark + " " + " | ".join(_normalise_text(c) for c in cells)
    return _normalise_text(stripped)


def _normalise_text(text: str) -> str:
    for pattern, repl in _SUBS:
        text = pattern.sub(repl, text)
    return text.strip()


def _line_pattern(normalised: str) -> re.Pattern:
    parts = re.split(r"(<bytes>|<size>|<isize>)", normalised)
    out = []
    for p in parts:
        if p == "<bytes>":
            out.append(r"<(?:bytes|size|isize)>")
        elif p in ("<size>", "<isize>"):
            out.append(rf"(?:{re.escape(p)}|<bytes>)")
        else:
            out.append(re.escape(p))
    return re.compile("".join(out))


def lines_match(expected: str, actual: str) -> bool:
    """Two normalised lines match: equal, or equal but for a plain-bytes size (see the module)."""
    return expected == actual or bool(_line_pattern(expected).fullmatch(actual))


def align(expected: list[str], actual: list[str]) -> list[tuple[int, int]] | None:
    """How ``expected`` (normalised, ``...`` lines as wildcards) matches all of ``actual``: the
    (expected index, actual index) of each pair of matched lines, or None when it does not."""
    memo: dict[tuple[int, int], list[tuple[int, int]] | None] = {}

    def go(i: int, j: int) -> list[tuple[int, int]] | None:
        if (i, j) not in memo:
            if i == len(expected):
                memo[(i, j)] = [] if j == len(actual) else None
            elif expected[i] == ELLIPSIS:
                memo[(i, j)] = next((rest for k in range(j, len(actual) + 1)
                                     if (rest := go(i + 1, k)) is not None), None)
            elif j < len(actual) and lines_match(expected[i], actual[j]):
                rest = go(i + 1, j + 1)
                memo[(i, j)] = None if rest is None else [(i, j), *rest]
            else:
                memo[(i, j)] = None
        return memo[(i, j)]

    return go(0, 0)


_IDS = re.compile(r"\b(?:block_\d+_\S+?_[0-9a-z]{4,}|alloc_\d+_\S+?_[0-9a-f]{4})\b")


def learn_ids(expected: list[str], actual: list[str], ids: dict[str, str]) -> None:
    """Notes in ``ids`` which real block or reservation id each id of the doc's output stands
    for, from the lines that matched, so later commands of the page that name the doc's id
    (``grid memory deallocate block_0_local-2_hoftrzctiv``) can be run with the real one."""
    exp = [raw for raw in expected if normalise_line(raw)]
    act = [raw for raw in actual if normalise_line(raw)]
    pairs = align([normalise_line(e) for e in exp], [normalise_line(a) for a in act]) or []
    for i, j in pairs:
        for doc_id, real_id in zip(_IDS.findall(exp[i]), _IDS.findall(act[j])):
            ids.setdefault(doc_id, real_id)


def with_ids(text: str, ids: dict[str, str]) -> str:
    """``text`` with each doc id that ``learn_ids`` knows replaced by its real id."""
    return _IDS.sub(lambda m: ids.get(m.group(0), m.group(0)), text)


def compare(expected: list[str], actual: list[str], first_line: int = 1) -> list[str]:
    """Differences between a doc's output (``expected``, its first line being page line
    ``first_line``) and a run's (``actual``): empty when they have the same shape; else
    readable lines, each doc line and the actual line that replaces it."""
    exp = [(first_line + n, raw, normalise_line(raw)) for n, raw in enumerate(expected)]
    exp = [e for e in exp if e[2]]
    act = [(raw, normalise_line(raw)) for raw in actual]
    act = [a for a in act if a[1]]
    if align([e[2] for e in exp], [a[1] for a in act]) is not None:
        return []
    # Not the same shape: show where, doc line -> actual line, with ``...`` taken out.
    exp_plain = [e for e in exp if e[2] != ELLIPSIS]
    matcher = difflib.SequenceMatcher(a=[e[2] for e in exp_plain], b=[a[1] for a in act],
                                      autojunk=False)
    out: list[str] = []
    has_ellipsis = len(exp_plain) != len(exp)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        if tag == "insert" and has_ellipsis:
            out.append(f"  (+{j2 - j1} actual line(s) where the doc may elide with `...`: "
                       f"{act[j1][0].strip()!r}{' ...' if j2 - j1 > 1 else ''})")
            continue
        for k in range(i1, i2):
            out.append(f"  - doc line {exp_plain[k][0]}: {exp_plain[k][1].rstrip()}")
        for k in range(j1, j2):
            out.append(f"  + actual:       {act[k][0].rstrip()}")
    if not any(o.startswith("  -") or o.startswith("  +") for o in out):
        out.append("  (every doc line is there, but the actual output has lines the doc "
                   "has not; add them or elide them with `...`)")
    return out
