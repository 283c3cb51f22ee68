"""Which GLNet block each node of an exported graph belongs to, named as in the checkpoint layout.

The blocks are the units of the authors' checkpoint keys, in the order the network runs
them: `downsample_layers.0`, `stages.0.blocks.0`, ..., `downsample_layers.1`, ...,
`stages.3.blocks.J`, `norm`, `head`.

The dynamo exporter records each node's module scope (node metadata_props
"pkg.torch.onnx.name_scopes"), but onnxsim drops every node's metadata_props. So
`export.onnx` reads the scopes from the raw trace and writes one key, BLOCK_KEY, on every
node of the final graph, matched by node name (simplification keeps the names of the
nodes it keeps). Later steps keep that key on the nodes they keep (checked for
onnxruntime's fp16 converter and quantizer); the nodes they add (fused LayerNorms,
contrib Attention, Casts, QuantizeLinear/DequantizeLinear) carry none and are assigned
by the graph around them (`fill_blocks`): a node without a block belongs to the block of
the first node that reads its output (a Cast or a Q/DQ pair prepares the input of the
node after it), else to the block of the first node it reads from. One exception: a
QuantizeLinear of a Conv's, MatMul's or Gemm's output is that op's output quantization
(onnxruntime fuses DQ -> Conv -> Q into one integer kernel), so it and its
DequantizeLinear belong to that op's block; a block kept in float then has no
QuantizeLinear of its own, though it reads its input as the int8 kernel before it wrote it.

Both export (which nodes `--keep-float` leaves in float) and verification (which tensors
`debug-precision` compares) use this module; it imports no graph library.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from .errors import GlnetExportError, OptionError

if TYPE_CHECKING:
    import onnx

BLOCK_KEY = "glnet_export.block"  # node metadata_props key: the node's block
SCOPES_KEY = "pkg.torch.onnx.name_scopes"  # the dynamo exporter's module path of a node
NAMESPACE_KEY = "namespace"  # the same, as "name: class/name: class/..." (older exporters)
# A block's module path, possibly under a wrapper (GLNetFeatures holds the GLNet as an attribute).
_BLOCK = re.compile(r"(?:^|\.)(downsample_layers\.\d+|stages\.\d+\.blocks\.\d+|norm|head)$")
_STAGE = re.compile(r"^stages\.(\d+)$")


class BlockMapError(GlnetExportError):
    """The graph carries no block map (exported before glnet-export recorded one)."""


def block_of_scopes(scopes: Sequence[str]) -> str | None:
    """The block of a node from its module scopes, outermost first ('' for the model itself)."""
    for scope in scopes:
        found = _BLOCK.search(scope)
        if found:
            return found[1]
    return None


def _scopes(props: Mapping[str, str]) -> list[str]:
    if SCOPES_KEY in props:
        try:
            value = ast.literal_eval(props[SCOPES_KEY])  # a Python list literal of strings
        except (ValueError, SyntaxError):
            return []
        return [str(s) for s in value] if isinstance(value, list) else []
    if NAMESPACE_KEY in props:  # ": glnet.model.GLNet/downsample_layers.0: torch.nn...Sequential/..."
        return [part.split(":")[0].strip() for part in props[NAMESPACE_KEY].split("/")]
    return []


def block_order(name: str) -> tuple[int, int, int]:
    """Sort key: the order the network runs its blocks in."""
    parts = name.split(".")
    if parts[0] == "downsample_layers":
        return (int(parts[1]), 0, 0)
    if parts[0] == "stages":
        return (int(parts[1]), 1, int(parts[3]))
    return (4, 2 if name == "norm" else 3, 0)


def scope_blocks(model: onnx.ModelProto) -> dict[str, str]:
    """Node name -> block, from the exporter's scope metadata (the raw trace, before onnxsim)."""
    found = {}
    for node in model.graph.node:
        block = block_of_scopes(_scopes({p.key: p.value for p in node.metadata_props}))
        if block is not None and node.name:
            found[node.name] = block
    return found


def fill_blocks(order: Sequence[str], consumers: Mapping[str, Sequence[str]],
                producers: Mapping[str, Sequence[str]], known: Mapping[str, str]) -> dict[str, str]:
    """Every node of `order` (topological) -> its block: `known`, else the block of its first
    consumer that has one, else of its first producer that has one. Works for any graph
    (ONNX nodes, OpenVINO ops) given by node ids."""
    blocks = {n: known[n] for n in order if n in known}
    for node in reversed(order):  # consumers come later, so they are settled first
        if node not in blocks:
            block = next((blocks[c] for c in consumers.get(node, ()) if c in blocks), None)
            if block is not None:
                blocks[node] = block
    for node in order:
        if node not in blocks:
            block = next((blocks[p] for p in producers.get(node, ()) if p in blocks), None)
            if block is not None:
                blocks[node] = block
    return blocks


def _node_ids(graph: onnx.GraphProto) -> list[str]:
    return [node.name or f"#{i}" for i, node in enumerate(graph.node)]


def _onnx_neighbours(graph: onnx.GraphProto) -> tuple[list[str], dict[str, list[str]], dict[str, list[str]]]:
    ids = _node_ids(graph)
    made_by = {out: ids[i] for i, node in enumerate(graph.node) for out in node.output if out}
    consumers: dict[str, list[str]] = {n: [] for n in ids}
    producers: dict[str, list[str]] = {n: [] for n in ids}
    for i, node in enumerate(graph.node):
        for name in node.input:
            if name in made_by:
                consumers[made_by[name]].append(ids[i])
                producers[ids[i]].append(made_by[name])
    return ids, consumers, producers


_KERNELS = frozenset({"Conv", "MatMul", "Gemm"})


def _tags(graph: onnx.GraphProto) -> dict[str, str]:
    """The blocks the nodes carry, and the blocks of kernels' output Q/DQ pairs (see above)."""
    tags = {}
    for i, node in enumerate(graph.node):
        for prop in node.metadata_props:
            if prop.key == BLOCK_KEY:
                tags[node.name or f"#{i}"] = prop.value
    if not tags:
        return tags
    made_by = {out: (node.name or f"#{i}", node.op_type) for i, node in enumerate(graph.node) for out in node.output}
    for i, node in enumerate(graph.node):
        node_id = node.name or f"#{i}"
        if node_id in tags or node.op_type not in ("QuantizeLinear", "DequantizeLinear") or not node.input:
            continue
        source, kind = made_by.get(node.input[0], ("", ""))
        wanted = "QuantizeLinear" if node.op_type == "DequantizeLinear" else None
        if source in tags and (kind == wanted or (wanted is None and kind in _KERNELS)):
            tags[node_id] = tags[source]
    return tags


def tag_blocks(model: onnx.ModelProto, known: Mapping[str, str] | None = None) -> int:
    """Write BLOCK_KEY on every node: `known` (node name -> block), else the key it has, else
    its neighbours' block (`fill_blocks`). Returns how many nodes carry a block."""
    graph = model.graph
    ids, consumers, producers = _onnx_neighbours(graph)
    blocks = fill_blocks(ids, consumers, producers, {**_tags(graph), **(known or {})})
    for node_id, node in zip(ids, graph.node, strict=True):
        for i in reversed(range(len(node.metadata_props))):
            if node.metadata_props[i].key == BLOCK_KEY:
                del node.metadata_props[i]
        if node_id in blocks:
            node.metadata_props.add(key=BLOCK_KEY, value=blocks[node_id])
    return len(blocks)


def node_blocks(model: onnx.ModelProto, where: object = "") -> dict[str, str]:
    """Node id (its name, or `#i` for the i-th node when it has none) -> its block: the map
    `block_nodes` and `block_outputs` read, for a caller that needs both to compute it once.
    BlockMapError (naming `where`, the file) when the graph carries no block map."""
    graph = model.graph
    tags = _tags(graph)
    if not tags:
        raise BlockMapError(f"{where or 'the graph'}: no block map (no node carries the {BLOCK_KEY} key; "
                            "files exported before glnet-export recorded it have none): re-export it")
    ids, consumers, producers = _onnx_neighbours(graph)
    return fill_blocks(ids, consumers, producers, tags)


def block_nodes(model: onnx.ModelProto, where: object = "", blocks: Mapping[str, str] | None = None
                ) -> dict[str, list[str]]:
    """Block -> the names of its nodes, blocks in the order the network runs them, nodes in
    graph order. BlockMapError (naming `where`, the file) when the graph carries no block map.
    `blocks`: `node_blocks(model)`, when the caller has it already."""
    ids = _node_ids(model.graph)
    blocks = node_blocks(model, where) if blocks is None else blocks
    found: dict[str, list[str]] = {}
    for node_id, node in zip(ids, model.graph.node, strict=True):
        if node.name and node_id in blocks:
            found.setdefault(blocks[node_id], []).append(node.name)
    return {name: found[name] for name in sorted(found, key=block_order)}


def block_outputs(model: onnx.ModelProto, where: object = "", blocks: Mapping[str, str] | None = None
                  ) -> dict[str, str]:
    """Block -> the tensor that carries its output on to the rest of the network, in order.

    That is, of the tensors a block makes that the next block reads (or that are graph
    outputs) and that carry image data (not sizes computed from Shape), the one made last:
    the block's final residual Add, not the pooling matrices the next block shares.
    `blocks`: `node_blocks(model)`, when the caller has it already."""
    ids = _node_ids(model.graph)
    blocks = node_blocks(model, where) if blocks is None else blocks
    graph = model.graph
    data = {i.name for i in graph.input} - {t.name for t in graph.initializer}
    for node in graph.node:  # what depends on the input's values (a Shape's output does not)
        if node.op_type not in ("Shape", "Size") and any(name in data for name in node.input):
            data.update(out for out in node.output if out)
    graph_outputs = {o.name for o in graph.output}
    order = sorted(set(blocks.values()), key=block_order)
    following = dict(zip(order, order[1:], strict=False))
    readers: dict[str, set[str]] = {}
    for node_id, node in zip(ids, graph.node, strict=True):
        for name in node.input:
            readers.setdefault(name, set()).add(blocks.get(node_id, ""))
    found: dict[str, str] = {}
    for node_id, node in zip(ids, graph.node, strict=True):
        block = blocks.get(node_id)
        if block is None:
            continue
        for tensor in node.output:
            if tensor in data and (tensor in graph_outputs or following.get(block) in readers.get(tensor, ())):
                found[block] = tensor  # the last one made wins
    return {name: found[name] for name in order if name in found}


def describe_blocks(names: Iterable[str]) -> str:
    """'downsample_layers.0-3, stages.0.blocks.0-3, ..., norm, head': a short listing in order;
    a range stands only for consecutive blocks (stages.0.blocks.0-1, stages.0.blocks.3)."""
    groups: dict[str, list[int]] = {}
    for name in sorted(names, key=block_order):
        stem, _, index = name.rpartition(".")
        if stem and index.isdigit():
            groups.setdefault(stem + ".", []).append(int(index))
        else:
            groups.setdefault(name, [])
    parts = []
    for stem, indices in groups.items():
        if not indices:
            parts.append(stem)
        for run in _runs(indices):  # only consecutive indices collapse: 0-2 must not hide a missing 1
            parts.append(f"{stem}{run[0]}" if len(run) == 1 else f"{stem}{run[0]}-{run[-1]}")
    return ", ".join(parts)


def _runs(indices: list[int]) -> list[list[int]]:
    """[0, 1, 3] -> [[0, 1], [3]]: the runs of consecutive numbers, in order, repeats dropped."""
    runs: list[list[int]] = []
    for i in sorted(set(indices)):
        if runs and runs[-1][-1] + 1 == i:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def resolve_blocks(specs: Iterable[str], known: Sequence[str]) -> tuple[str, ...]:
    """Block names as given by a user (a block's name, or `stages.I` for every block of a
    stage; comma-separated strings are split), checked against `known`; in network order."""
    chosen: list[str] = []
    for raw in specs:
        for spec in (s.strip() for s in raw.split(",")):
            if not spec:
                continue
            stage = _STAGE.match(spec)
            names = [n for n in known if n.startswith(f"{spec}.blocks.")] if stage else [spec] * (spec in known)
            if not names:
                raise OptionError(f"--keep-float: {spec!r} is not a block of this model; its blocks are "
                                  f"{describe_blocks(known)} (or stages.I for a whole stage)")
            chosen += [n for n in names if n not in chosen]
    return tuple(sorted(chosen, key=block_order))
