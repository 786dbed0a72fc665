"""Learned tensors read inside ``If``/``Loop``/``Scan`` bodies (graph attributes): the
subgraph's own floating initializers and Constant tensors, and those of the enclosing
graphs its nodes read. mpslayout exports no subgraph, so every one is listed under the node
that holds the body, naming the inner nodes that read it (``--strict`` then fails)."""

from __future__ import annotations

from typing import Any

__all__ = ["has_bodies", "refuse_with_bodies"]

_GRAPH, _GRAPHS = 5, 10  # AttributeProto.GRAPH, GRAPHS


def _bodies(node: Any) -> list[tuple[str, Any]]:
    out = []
    for a in node.attribute:
        if a.type == _GRAPH:
            out.append((a.name, a.g))
        elif a.type == _GRAPHS:
            out.extend((f"{a.name}[{i}]", sub) for i, sub in enumerate(a.graphs))
    return out


def _float_code(code: int) -> bool:
    return code in (1, 10, 11, 16)  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


def _walk(graph: Any, outer: dict[str, bool], where: str,
          found: dict[str, list[str]], depth: int) -> None:
    """Collect into ``found`` (tensor -> readers) the learned tensors nodes of ``graph``
    read; ``outer``: float-ness of the enclosing scopes' initializers."""
    if depth > 16:
        return
    scope = dict(outer)
    for t in graph.initializer:
        scope[t.name] = _float_code(t.data_type)
    for n in graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and _float_code(a.t.data_type) and len(a.t.dims) and \
                        n.output:
                    scope[n.output[0]] = True
    for n in graph.node:
        who = f"{where}/{n.name or n.op_type} ({n.op_type})"
        for t in n.input:
            if t and scope.get(t):
                found.setdefault(t, []).append(who)
        for label, sub in _bodies(n):
            _walk(sub, scope, f"{where}/{n.name or n.op_type}.{label}", found, depth + 1)


def has_bodies(node: Any) -> bool:
    return bool(_bodies(node))


def refuse_with_bodies(g: Any, node: Any) -> None:
    """Refuse ``node`` (it holds If/Loop/Scan bodies; ``g`` a graph.Graph), naming the
    learned tensors its bodies read and the inner nodes that read them."""
    top = {name: _float_code(t.data_type) and len(t.dims) > 0 for name, t in g.protos.items()}
    found: dict[str, list[str]] = {}
    for label, sub in _bodies(node):
        _walk(sub, top, f"{g.name(node)}.{label}", found, 0)
    if not found:
        g.plan.refuse(g.name(node), node.op_type, "no MPS layer mapping known to mpslayout "
                      "(a control-flow body without learned tensors)")
        return
    readers = sorted({r for rs in found.values() for r in rs})
    shown = ", ".join(readers[:6]) + (f", ... ({len(readers)} nodes)"
                                      if len(readers) > 6 else "")
    g.plan.refuse(g.name(node), node.op_type,
                  f"learned tensors read inside its subgraph ({shown}): mpslayout exports no "
                  "If/Loop/Scan body", sorted(found))
