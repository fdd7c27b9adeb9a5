"""Pictures of the autograd graph: GraphML, Graphviz DOT, SVG and PNG, the culprit filled red and its path from
an output drawn orange.

SVG and PNG are laid out by Graphviz's ``dot`` program when it is installed (``GRADAUDIT_NO_DOT=1`` ignores it).
Without it, SVG falls back to a layered drawing made here (outputs on top, each node one row below its deepest
parent), and PNG cannot be written.
"""
from __future__ import annotations

import errno
import html
import logging
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import networkx as nx

from gradaudit.analyzers.graph import _clean, mark_culprit

__all__ = ["FORMATS", "GraphvizError", "dot_program", "format_of", "render_svg", "run_dot", "to_dot", "to_svg",
           "write_graph"]

FORMATS = ("graphml", "dot", "svg", "png")
DOT_TIMEOUT_S = 60.0
TITLE_CHARS = 64
CULPRIT_FILL, PATH_COLOUR = "#e74c3c", "#e67e22"
FILLS = {"output": "#dde7f5", "leaf": "#e5f2e0", "node": "#f4f4f4"}
_log = logging.getLogger(__name__)


class GraphvizError(OSError):
    """``dot`` is missing, failed or timed out; the message is one line."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def dot_program() -> str | None:
    """The path of Graphviz's ``dot``, or None when it is not installed or ``GRADAUDIT_NO_DOT`` is set."""
    if os.environ.get("GRADAUDIT_NO_DOT", "") not in ("", "0"):
        return None
    return shutil.which("dot")


def run_dot(dot_text: str, format: str, timeout: float = DOT_TIMEOUT_S) -> bytes:
    """``dot -T<format>`` on DOT text; raises :class:`GraphvizError` with the reason when that fails."""
    program = dot_program()
    if program is None:
        raise GraphvizError(errno.ENOENT, "Graphviz's dot program is not installed (e.g. apt-get install graphviz)")
    extra = ["-Gdpi=144"] if format == "png" else []
    _log.debug("laying out the graph with %s -T%s", program, format)
    try:
        done = subprocess.run([program, f"-T{format}", *extra], input=dot_text.encode(), capture_output=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise GraphvizError(errno.ETIMEDOUT, f"Graphviz dot took over {timeout:g} s") from None
    except OSError as exc:
        raise GraphvizError(errno.EIO, f"Graphviz dot could not run: {exc.strerror or exc}") from None
    if done.returncode != 0 or not done.stdout:
        reason = done.stderr.decode(errors="replace").strip().splitlines()
        raise GraphvizError(errno.EIO, f"Graphviz dot failed (exit {done.returncode})"
                                       + (f": {reason[0]}" if reason else ""))
    return done.stdout


def format_of(path: str | os.PathLike, format: str | None = None) -> str:
    """The format to write: ``format`` if given, else from the suffix of ``path``. Raises ValueError for an
    unknown suffix, and for PNG when Graphviz's ``dot`` is not installed."""
    if not format:
        format = Path(path).suffix.lower().lstrip(".")
        format = {"gv": "dot", "xml": "graphml"}.get(format, format)
        if format not in FORMATS:
            raise ValueError(f"cannot tell the graph format from {str(path)!r}; use .graphml, .dot, .svg or .png")
    if format == "png" and dot_program() is None:
        raise ValueError("writing PNG needs Graphviz's dot program: install graphviz (e.g. apt-get install "
                         "graphviz), or write .svg")
    return format


def write_graph(graph: nx.DiGraph, path: str | os.PathLike, format: str | None = None,
                culprit: str | None = None, title: str | None = None) -> str:
    """Write the graph as GraphML, DOT, SVG or PNG (from the suffix unless ``format`` is given), the culprit
    highlighted; returns the format written. A failure of ``dot`` is a note for SVG (the built-in drawing is
    written instead) and a :class:`GraphvizError` (an OSError naming the file) for PNG."""
    format = format_of(path, format)
    mark_culprit(graph, culprit)
    if format == "graphml":
        nx.write_graphml(_clean(graph), str(path))
    elif format == "dot":
        Path(path).write_text(to_dot(graph, title=title))
    elif format == "svg":
        Path(path).write_text(render_svg(graph, title=title))
    else:
        try:
            picture = run_dot(to_dot(graph, title=title), "png")
        except GraphvizError as exc:
            exc.filename = str(path)
            raise
        Path(path).write_bytes(picture)
    return format


def render_svg(graph: nx.DiGraph, culprit: str | None = None, title: str | None = None) -> str:
    """SVG text of the graph, starting at ``<svg`` (fit to embed in HTML): laid out by Graphviz when ``dot``
    is installed, else (or when ``dot`` fails, with a note on the log) drawn by :func:`to_svg`."""
    if culprit is not None:
        mark_culprit(graph, culprit)
    if dot_program() is not None:
        try:
            text = run_dot(to_dot(graph, title=title), "svg").decode()
            return text[text.index("<svg"):]
        except (GraphvizError, UnicodeDecodeError, ValueError) as exc:
            _log.warning("%s; drawing the graph without Graphviz", exc)
    return to_svg(graph, title=title)


def _label(data: dict) -> list[str]:
    """Name; op (autograd nodes); module path and source line."""
    lines = [str(data.get("name", ""))]
    op, module, source = data.get("op"), data.get("module"), data.get("source")
    if data.get("kind") == "node" and op:
        lines.append(str(op))
    where = " ".join(x for x in (module, source) if x)
    if where:
        lines.append(where)
    return lines


def _title_lines(title: str) -> list[str]:
    """The title wrapped to lines of at most TITLE_CHARS characters (a picture is no wider than its title)."""
    return textwrap.wrap(title, TITLE_CHARS, break_on_hyphens=False) or [title]


def _tooltip(data: dict) -> str:
    return " | ".join(str(data[k]) for k in ("name", "op", "module", "source") if data.get(k))


def _dot_escape(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace('"', '\\"')


def _dot_node_style(data: dict) -> str:
    kind = data.get("kind")
    if data.get("culprit"):
        return f'style="filled,bold", fillcolor="{CULPRIT_FILL}", fontcolor=white, color="#992222", penwidth=2'
    style = {"output": "shape=ellipse, style=filled", "leaf": 'shape=box, style="rounded,filled"'}.get(
        kind, "style=filled")
    style += f', fillcolor="{FILLS.get(kind, FILLS["node"])}"'
    return style + (f', color="{PATH_COLOUR}", penwidth=2' if data.get("on_path") else "")


def to_dot(graph: nx.DiGraph, culprit: str | None = None, title: str | None = None) -> str:
    """Graphviz DOT text (written here: no pygraphviz needed); the culprit is filled red, its path orange."""
    if culprit is not None:
        mark_culprit(graph, culprit)
    lines = ["digraph autograd {", "  rankdir=TB;", "  nodesep=0.25; ranksep=0.4;",
             '  node [shape=box, fontname="Helvetica", fontsize=10, color="#666666"];',
             '  edge [color="#999999", arrowsize=0.7];']
    if title:  # '\\l' ends a left-aligned line
        label = "".join(_dot_escape(line) + "\\l" for line in _title_lines(title))
        lines.append(f'  label="{label}"; labelloc=t; labeljust=l; fontname="Helvetica-Bold"; fontsize=13;')
    for node, data in graph.nodes(data=True):
        label = "\\n".join(_dot_escape(x) for x in _label(data))
        lines.append(f'  "{_dot_escape(node)}" [label="{label}", tooltip="{_dot_escape(_tooltip(data))}", '
                     f'{_dot_node_style(data)}];')
    for a, b, data in graph.edges(data=True):
        extra = f' [color="{PATH_COLOUR}", penwidth=2]' if data.get("on_path") else ""
        lines.append(f'  "{_dot_escape(a)}" -> "{_dot_escape(b)}"{extra};')
    lines.append("}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ the built-in drawing
BOX_H, GAP_X, GAP_Y, MARGIN, MAX_CHARS, BEND_W = 46, 24, 40, 20, 60, 4.0
BEND = "\0bend:"  # id prefix of bend points (no node id starts with a NUL)


def _text_width(text: str, bold: bool) -> float:
    """A generous estimate of the width of Helvetica text at the sizes below (no font metrics here)."""
    return len(text) * (7.0 if bold else 5.8)


def _lines(data: dict) -> list[str]:
    return [line if len(line) <= MAX_CHARS else line[:MAX_CHARS - 1] + "…" for line in _label(data)[:3]]


def _box_width(data: dict) -> float:
    lines = _lines(data)
    return max(120.0, max(_text_width(line, k == 0) for k, line in enumerate(lines)) + 20)


def _layers(graph: nx.DiGraph) -> dict[str, int]:
    """Longest-path depth from the outputs: each node one row below its deepest parent; leaves no output
    reaches go to the bottom row."""
    depth: dict[str, int] = {}
    for node in nx.topological_sort(graph):
        depth[node] = 1 + max((depth[p] for p in graph.predecessors(node)), default=-1)
    bottom = max(depth.values(), default=0)
    for node, data in graph.nodes(data=True):
        if data.get("kind") == "leaf" and graph.in_degree(node) == 0:
            depth[node] = max(bottom, 1)
    return depth


def _spread(desired: list[float], widths: list[float], weights: list[float]) -> list[float]:
    """Centres as close to ``desired`` (ascending) as boxes of ``widths`` allow without overlapping: pushed
    right where they would overlap, then shifted back so the heavier ones (boxes, not bends) sit on their wish."""
    centres: list[float] = []
    for k, (x, w) in enumerate(zip(desired, widths)):
        if centres:
            x = max(x, centres[-1] + (widths[k - 1] + w) / 2 + GAP_X)
        centres.append(x)
    shift = sum(g * (d - c) for g, d, c in zip(weights, desired, centres)) / sum(weights)
    return [x + shift for x in centres]


def _with_bends(graph: nx.DiGraph, depth: dict[str, int]) -> tuple[nx.DiGraph, dict[tuple[str, str], list[str]]]:
    """The graph with each edge that spans several rows cut by one bend point per row in between (added to
    ``depth``): bends are ordered and spaced like boxes, so long edges go round boxes instead of through them."""
    layout, bends = nx.DiGraph(), {}
    layout.add_nodes_from(graph.nodes)
    for a, b in graph.edges:
        chain = [f"{BEND}{a}->{b}:{level}" for level in range(depth[a] + 1, depth[b])]
        depth.update({point: depth[a] + 1 + k for k, point in enumerate(chain)})
        nx.add_path(layout, [a, *chain, b])
        bends[(a, b)] = chain
    return layout, bends


def _positions(layout: nx.DiGraph, depth: dict[str, int], widths: dict[str, float],
               weights: dict[str, float]) -> dict[str, tuple[float, float]]:
    """Box centres (x, y): rows by depth, each node placed under the mean x of its parents, weighted by
    ``weights`` (how much a node pulls on its row and on its children: light ones give way to heavy ones)."""
    rows: dict[int, list[str]] = {}
    for node in layout.nodes:
        rows.setdefault(depth[node], []).append(node)
    x_of: dict[str, float] = {}
    for level in sorted(rows):
        row = rows[level]
        wish = {}
        for k, node in enumerate(row):
            parents = [p for p in layout.predecessors(node) if p in x_of]
            total = sum(weights[p] for p in parents)
            wish[node] = sum(weights[p] * x_of[p] for p in parents) / total if parents else k * 200.0
        row.sort(key=lambda n: (wish[n], n))
        for node, x in zip(row, _spread([wish[n] for n in row], [widths[n] for n in row],
                                        [weights[n] for n in row])):
            x_of[node] = x
    left = min((x_of[n] - widths[n] / 2 for n in layout.nodes), default=0.0)
    return {node: (x_of[node] - left + MARGIN, depth[node] * (BOX_H + GAP_Y) + BOX_H / 2)
            for node in layout.nodes}


def _layout(graph: nx.DiGraph, widths: dict[str, float]) -> tuple[dict, dict]:
    """Centres of the boxes and bend points, and the bend points of each edge (``widths`` gains the bends)."""
    depth = _layers(graph)
    layout, bends = _with_bends(graph, depth)
    widths.update({point: BEND_W for chain in bends.values() for point in chain})
    weights: dict[str, float] = {}  # the size of what hangs below a node (capped): big subtrees keep their place
    for node in reversed(list(nx.topological_sort(graph))):
        weights[node] = min(1e6, 1.0 + sum(weights[child] for child in graph.successors(node)))
    weights.update({point: 0.01 for chain in bends.values() for point in chain})
    return _positions(layout, depth, widths, weights), bends


_MARKERS = "".join(  # arrow heads sized in pixels, not in stroke widths: a thick path gets no huge head
    f'<marker id="{name}" viewBox="0 0 10 10" refX="10" refY="5" markerUnits="userSpaceOnUse" '
    f'markerWidth="{size}" markerHeight="{size}" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" '
    f'fill="{colour}"/></marker>' for name, colour, size in (("arrow", "#888", 8), ("arrow-hot", PATH_COLOUR, 11)))


def _svg_edge(points: list[tuple[float, float]], hot: bool) -> str:
    """A line from the bottom of one box through the bend points to the top of the next: straight down
    through each row it crosses, curved between rows."""
    x, y = points[0][0], points[0][1] + BOX_H / 2
    path = [f"M {x:.1f} {y:.1f}"]
    for k, (next_x, next_y) in enumerate(points[1:], 1):
        top = next_y - BOX_H / 2
        bend = (top - y) / 2
        path.append(f"C {x:.1f} {y + bend:.1f} {next_x:.1f} {top - bend:.1f} {next_x:.1f} {top:.1f}")
        x, y = next_x, next_y + BOX_H / 2
        if k < len(points) - 1:
            path.append(f"L {x:.1f} {y:.1f}")
    return (f'<path d="{" ".join(path)}" fill="none" stroke="{PATH_COLOUR if hot else "#aaa"}" '
            f'stroke-width="{2.5 if hot else 1}" marker-end="url(#{"arrow-hot" if hot else "arrow"})"/>')


def _svg_node(data: dict, centre: tuple[float, float], width: float) -> str:
    x, y = centre
    kind = data.get("kind")
    fill, stroke, text_colour, stroke_width = FILLS.get(kind, FILLS["node"]), "#666", "#222", 1.0
    if data.get("culprit"):
        fill, stroke, text_colour, stroke_width = CULPRIT_FILL, "#922", "white", 3.0
    elif data.get("on_path"):
        stroke, stroke_width = PATH_COLOUR, 2.5
    parts = [f'<g><title>{html.escape(_tooltip(data))}</title><rect x="{x - width / 2:.1f}" y="{y - BOX_H / 2:.1f}" '
             f'width="{width:.0f}" height="{BOX_H}" rx="{18 if kind == "output" else 6}" fill="{fill}" '
             f'stroke="{stroke}" stroke-width="{stroke_width:g}"/>']
    lines = _lines(data)
    for k, line in enumerate(lines):
        dy = (k - (len(lines) - 1) / 2) * 13 + 4
        weight = ' font-weight="bold"' if k == 0 else ""
        parts.append(f'<text x="{x:.1f}" y="{y + dy:.1f}" font-size="{11 if k == 0 else 9.5}" '
                     f'text-anchor="middle" fill="{text_colour}"{weight}>{html.escape(line)}</text>')
    return "".join(parts) + "</g>"


def to_svg(graph: nx.DiGraph, culprit: str | None = None, title: str | None = None) -> str:
    """The built-in drawing (no Graphviz): outputs on top, one row per longest-path depth, each node under its
    parents; the culprit filled red with its path from the output in orange."""
    if culprit is not None:
        mark_culprit(graph, culprit)
    widths = {node: _box_width(data) for node, data in graph.nodes(data=True)}
    title_lines = _title_lines(title) if title else []
    top = MARGIN + 18 * len(title_lines) + (6 if title_lines else 0)
    placed, bends = _layout(graph, widths)
    centre = {node: (x, y + top) for node, (x, y) in placed.items()}
    right = max((x + widths[node] / 2 for node, (x, _) in centre.items()), default=0.0)
    bottom = max((y + BOX_H / 2 for _, y in centre.values()), default=top)
    width = max([right + MARGIN] + [2 * MARGIN + _text_width(line, True) * 1.2 for line in title_lines])
    height = bottom + MARGIN
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="Helvetica, Arial, sans-serif">',
           f"<defs>{_MARKERS}</defs>", '<rect width="100%" height="100%" fill="white"/>']
    out += [f'<text x="{MARGIN}" y="{MARGIN + 6 + 18 * k}" font-size="14" font-weight="bold">{html.escape(line)}</text>'
            for k, line in enumerate(title_lines)]
    out += [_svg_edge([centre[n] for n in (a, *bends[(a, b)], b)], bool(data.get("on_path")))
            for a, b, data in graph.edges(data=True)]
    out += [_svg_node(data, centre[node], widths[node]) for node, data in graph.nodes(data=True)]
    out.append("</svg>")
    return "\n".join(out) + "\n"
