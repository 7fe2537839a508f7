"""API-format workflows: loading and `node.input=value` overrides."""

from __future__ import annotations

import json


def load_workflow(path: str) -> dict:
    """An API-format graph ({node_id: {"class_type", "inputs"}}); a UI-format file is refused with what to do."""
    with open(path, encoding="utf-8") as f:
        graph = json.load(f)
    if "nodes" in graph and "links" in graph:
        raise ValueError(f"'{path}' is a UI-format workflow; use its API-format twin (workflows/api/) or export it "
                         "with 'Export (API)' in the editor.")
    if not isinstance(graph, dict) or not all(isinstance(n, dict) and "class_type" in n for n in graph.values()):
        raise ValueError(f"'{path}' is not an API-format workflow.")
    return graph


def parse_value(text: str):
    """JSON when it parses (numbers, true/false, quoted strings, lists), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def set_input(graph: dict, target: str, value) -> dict:
    """A copy of the graph with `node.input` set to value; node is an id or a node title (`_meta.title`)."""
    graph = json.loads(json.dumps(graph))
    node, dot, name = target.rpartition(".")
    if not dot or not node or not name:
        raise ValueError(f"'{target}' is not of the form node.input.")
    titles = {n.get("_meta", {}).get("title"): node_id for node_id, n in graph.items()}
    node_id = node if node in graph else titles.get(node)
    if node_id is None:
        raise ValueError(f"'{target}': no node with id or title '{node}' (ids: {sorted(graph)}).")
    if name not in graph[node_id]["inputs"]:
        raise ValueError(f"'{target}': node {node_id} ({graph[node_id]['class_type']}) has no input '{name}' "
                         f"(inputs: {sorted(graph[node_id]['inputs'])}).")
    graph[node_id]["inputs"][name] = value
    return graph


def apply_overrides(graph: dict, overrides: list[str]) -> dict:
    """The graph with each `node.input=value` override applied (value parsed as JSON when it parses)."""
    for override in overrides:
        target, sep, value = override.partition("=")
        if not sep:
            raise ValueError(f"--set '{override}' is not of the form node.input=value.")
        graph = set_input(graph, target, parse_value(value))
    return graph
