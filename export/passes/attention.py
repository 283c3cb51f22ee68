"""onnxruntime-only graph rewrite: multi-head self-attention -> com.microsoft.Attention.

onnxruntime does not fuse GLNet's attention on the CPU by itself; its contrib `Attention`
kernel is about 25% faster than the MatMul/Softmax/MatMul chain it replaces (measured on
glnet_4g: 54.1 -> 51.0 ms summed per-node minimum, 30 attentions fused).

Matches the graph that `glnet.layers.attention` exports (after the exporter's optimizer and
onnxsim): MatMul(x, W)[+Add(b)] -> Reshape(B,S,3,N,H) -> Transpose(2,0,3,1,4) -> Gather 0/1/2
-> Mul(q, scale) @ Transpose(k) -> Softmax -> @ v -> Transpose(0,2,1,3) -> Reshape(B,S,C),
and replaces it by one Attention(x, W, b) node (W is C x 3C with q|k|v columns, as in
nn.MultiheadAttention.in_proj_weight.T). The result runs only on onnxruntime (contrib op):
so it is a pass of the onnxruntime target only (`export.passes`, `glnet-export onnx --target
onnxruntime`); the portable file stays standard ONNX for TensorRT and OpenVINO.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _perm(node: onnx.NodeProto) -> list[int]:
    return [list(a.ints) for a in node.attribute if a.name == "perm"][0]


def _shape_tail(name: str, prod: dict, consts: dict) -> np.ndarray:  # noqa: D401
    """The (heads, head_dim) at the end of a Reshape's target shape, constant or a Concat."""
    if name in consts:
        return consts[name].reshape(-1)[-2:]
    cat = prod[name]
    assert cat.op_type == "Concat"
    return np.concatenate([consts[i].reshape(-1) for i in cat.input[-2:]])[-2:]


def _projection(node: onnx.NodeProto, prod: dict, consts: dict) -> tuple[str, np.ndarray, np.ndarray | None]:
    """(x, W as C x 3C, bias or None) of the q|k|v projection that produced `node`'s output."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Gemm":  # x reshaped to 2-D: Reshape(x, [-1, C]) -> Gemm
        assert not attrs.get("transA", 0) and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0
        w = consts[node.input[1]]
        w = w.T if attrs.get("transB", 0) else w
        bias = consts[node.input[2]] if len(node.input) > 2 and node.input[2] else None
        flat = prod[node.input[0]]
        assert flat.op_type == "Reshape"
        return flat.input[0], w, bias
    bias = None
    if node.op_type == "Add":
        const = [i for i in node.input if i in consts]
        assert len(const) == 1
        bias = consts[const[0]]
        node = prod[[i for i in node.input if i not in consts][0]]
    assert node.op_type == "MatMul"
    return node.input[0], consts[node.input[1]], bias


def fuse_attention(model: onnx.ModelProto) -> int:
    """Rewrite `model` in place; returns the number of attentions fused."""
    g = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    consts.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in g.node
                   if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    prod = {o: n for n in g.node for o in n.output}
    cons: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)
    outputs = {o.name for o in g.output}

    def one_consumer(name: str, op: str) -> onnx.NodeProto:
        users = cons.get(name, [])
        assert name not in outputs and len(users) == 1 and users[0].op_type == op
        return users[0]

    def by(name: str, op: str) -> onnx.NodeProto:
        node = prod[name]
        assert node.op_type == op
        return node

    replace: dict[int, onnx.NodeProto] = {}
    dead: set[int] = set()
    stale: set[str] = set()
    for sm in list(g.node):
        if sm.op_type != "Softmax":
            continue
        # Every check is an assertion: any mismatch leaves this softmax's graph untouched.
        try:
            axis = [a.i for a in sm.attribute if a.name == "axis"]
            assert axis in ([], [-1], [3])
            qk = by(sm.input[0], "MatMul")
            mul, kt = by(qk.input[0], "Mul"), by(qk.input[1], "Transpose")
            assert _perm(kt) == [0, 1, 3, 2]
            scale = float(consts[mul.input[1]])
            av = one_consumer(sm.output[0], "MatMul")
            assert av.input[0] == sm.output[0]
            gathers = [by(mul.input[0], "Gather"), by(kt.input[0], "Gather"), by(av.input[1], "Gather")]
            assert [int(consts[gg.input[1]]) for gg in gathers] == [0, 1, 2]
            assert len({gg.input[0] for gg in gathers}) == 1
            split = by(gathers[0].input[0], "Transpose")
            assert _perm(split) == [2, 0, 3, 1, 4]
            rs5 = by(split.input[0], "Reshape")
            heads, head_dim = (int(v) for v in _shape_tail(rs5.input[1], prod, consts))
            c = heads * head_dim
            x, w, bias = _projection(prod[rs5.input[0]], prod, consts)
            bias = np.zeros(3 * c, np.float32) if bias is None else bias.reshape(-1)
            assert w.shape == (c, 3 * c) and bias.shape == (3 * c,)
            # onnxruntime's CPU Attention kernel is float32 only: leave fp16/int8 graphs as they are.
            assert w.dtype == np.float32
            back = one_consumer(av.output[0], "Transpose")
            assert _perm(back) == [0, 2, 1, 3]
            users = cons.get(back.output[0], [])
            assert back.output[0] not in outputs and users and all(u.op_type == "Reshape" for u in users)
        except (AssertionError, KeyError, IndexError, TypeError, ValueError):
            continue
        name = f"attention_{len(replace)}"
        g.initializer.extend([numpy_helper.from_array(np.ascontiguousarray(w, np.float32), f"{name}_w"),
                              numpy_helper.from_array(bias, f"{name}_b")])
        replace[id(back)] = helper.make_node(
            "Attention", [x, f"{name}_w", f"{name}_b"], [back.output[0]], name=name,
            domain="com.microsoft", num_heads=heads, scale=scale)
        # the Reshape after `back` stays: it reshapes Attention's B x S x C output as before
        dead.update(id(n) for n in (sm, qk, mul, kt, av))
        stale.add(back.output[0])
    if not replace:
        return 0
    nodes = [replace.get(id(n), n) for n in g.node if id(n) not in dead]
    # drop what no longer reaches an output (the old projections, reshapes, gathers)
    needed = set(outputs)
    keep = []
    for n in reversed(nodes):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(i for i in n.input if i)
    del g.node[:]
    g.node.extend(reversed(keep))
    inits = [i for i in g.initializer if i.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)
    infos = [v for v in g.value_info if v.name not in stale]
    del g.value_info[:]
    g.value_info.extend(infos)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return len(replace)

