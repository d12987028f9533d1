#!/usr/bin/env python3
"""Generate the token-selection fixtures in tests/models/token_select/ (used by
tests/tests/token_select.rs).

Each model is built with the onnx helper, then run by onnxruntime (CPU provider) on a seeded
input; the input and every graph output are saved beside it as NAME.input.npy and
NAME.<output name>.npy. Nothing here is hand-written: rerun this script to regenerate them all
(the same onnx/onnxruntime versions give the same bytes).

    source .venv/bin/activate && python tests/models/gen/token_select.py

Models:
- token_select_gather_elements: a DynamicViT-style selection. Scores = tokens·w, TopK on the
  scores, the indices expanded over the channels, GatherElements of the kept tokens, a linear
  layer, gated by sigmoid of the kept scores.
- token_select_gather: the same selection written with Gather on the (squeezed) TopK indices.
- topk_*: TopK alone on inputs with many ties (small integers as floats), along first, middle
  and last axes, largest = 0 and 1, K = 1 and K = N, sorted = 0, NaN and infinities, an int32
  input, and opset 10 (K as an input, no largest/sorted attributes).
- gather_elements_neg: GatherElements with constant negative indices that are shorter than the
  data off the axis (ONNX allows it) and longer along it.
"""

import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

OUT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "token_select"))


def save(name, model, x):
    onnx.checker.check_model(model, full_check=True)
    path = os.path.join(OUT, f"{name}.onnx")
    onnx.save(model, path)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0].name
    outs = sess.run(None, {inp: x})
    np.save(os.path.join(OUT, f"{name}.input.npy"), x)
    for o, v in zip(sess.get_outputs(), outs):
        np.save(os.path.join(OUT, f"{name}.{o.name}.npy"), v)
    print(name, x.shape, [(o.name, v.shape, v.dtype) for o, v in zip(sess.get_outputs(), outs)])


def mk(nodes, inputs, outputs, inits, opset=13):
    g = h.make_graph(nodes, "g", inputs, outputs, inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)], producer_name="vitc-gen")
    m.ir_version = 8
    return m


def f32(name, shape):
    return h.make_tensor_value_info(name, T.FLOAT, shape)


def i64c(name, vals):
    return nh.from_array(np.asarray(vals, dtype=np.int64), name)


def token_select(use_gather):
    n, d, k, hidden = 12, 8, 5, 6
    rng = np.random.RandomState(10 if use_gather else 11)
    w_score = rng.randn(d, 1).astype(np.float32)
    w_fc = (rng.randn(d, hidden) / np.sqrt(d)).astype(np.float32)
    b_fc = rng.randn(hidden).astype(np.float32)
    inits = [
        nh.from_array(w_score, "w_score"),
        nh.from_array(w_fc, "w_fc"),
        nh.from_array(b_fc, "b_fc"),
        i64c("K", [k]),
        i64c("ax2", [2]),
    ]
    inits.append(i64c("ax0", [0]) if use_gather else i64c("sel_shape", [1, k, d]))
    nodes = [
        h.make_node("MatMul", ["tokens", "w_score"], ["scores3"], name="score"),
        h.make_node("Squeeze", ["scores3", "ax2"], ["scores"], name="squeeze_scores"),
        h.make_node("TopK", ["scores", "K"], ["kept", "idx"], name="topk", axis=1),
    ]
    if use_gather:
        nodes += [
            h.make_node("Squeeze", ["idx", "ax0"], ["idx1"], name="squeeze_idx"),
            h.make_node("Gather", ["tokens", "idx1"], ["sel"], name="gather", axis=1),
        ]
    else:
        nodes += [
            h.make_node("Unsqueeze", ["idx", "ax2"], ["idx3"], name="unsqueeze_idx"),
            h.make_node("Expand", ["idx3", "sel_shape"], ["idxe"], name="expand_idx"),
            h.make_node("GatherElements", ["tokens", "idxe"], ["sel"], name="gather", axis=1),
        ]
    nodes += [
        h.make_node("MatMul", ["sel", "w_fc"], ["fc"], name="fc"),
        h.make_node("Add", ["fc", "b_fc"], ["fcb"], name="fc_bias"),
        h.make_node("Unsqueeze", ["kept", "ax2"], ["kept3"], name="unsqueeze_kept"),
        h.make_node("Sigmoid", ["kept3"], ["gate"], name="gate"),
        h.make_node("Mul", ["fcb", "gate"], ["output"], name="gated"),
    ]
    m = mk(nodes, [f32("tokens", [1, n, d])], [f32("output", [1, k, hidden])], inits)
    x = np.random.RandomState(20 if use_gather else 21).randn(1, n, d).astype(np.float32)
    name = "token_select_gather" if use_gather else "token_select_gather_elements"
    save(name, m, x)


def topk(name, x, k, axis, largest=1, sorted_=1, opset=13, cast=None):
    """TopK on graph input `x` (optionally cast first); outputs `values` and `indices`."""
    rank = x.ndim
    attrs = {"axis": axis}
    if opset >= 11:
        attrs.update(largest=largest, sorted=sorted_)
    src, nodes = "x", []
    vt = T.FLOAT
    if cast is not None:
        nodes.append(h.make_node("Cast", ["x"], ["xc"], name="cast", to=cast))
        src, vt = "xc", cast
    nodes.append(h.make_node("TopK", [src, "K"], ["values", "indices"], name="topk", **attrs))
    outs = [
        h.make_tensor_value_info("values", vt, [None] * rank),
        h.make_tensor_value_info("indices", T.INT64, [None] * rank),
    ]
    m = mk(nodes, [f32("x", list(x.shape))], outs, [i64c("K", [k])], opset)
    save(name, m, x.astype(np.float32))


def ties(shape, hi, seed):
    return np.random.RandomState(seed).randint(0, hi, shape).astype(np.float32)


def gather_elements_neg():
    rng = np.random.RandomState(30)
    idx = rng.randint(-5, 5, (3, 7, 2)).astype(np.int64)
    nodes = [h.make_node("GatherElements", ["x", "idx"], ["output"], name="ge", axis=1)]
    m = mk(nodes, [f32("x", [4, 5, 3])], [f32("output", [3, 7, 2])], [nh.from_array(idx, "idx")])
    save("gather_elements_neg", m, rng.randn(4, 5, 3).astype(np.float32))


def main():
    print("onnx", onnx.__version__, "onnxruntime", ort.__version__, file=sys.stderr)
    os.makedirs(OUT, exist_ok=True)
    token_select(use_gather=False)
    token_select(use_gather=True)
    topk("topk_ties", ties((3, 10), 4, 1), 4, axis=1)
    topk("topk_smallest_axis0", ties((6, 3, 2), 3, 2), 3, axis=0, largest=0)
    topk("topk_middle_axis", ties((2, 9, 3), 3, 3), 4, axis=1)
    topk("topk_k1", ties((4, 9), 3, 4), 1, axis=-1)
    topk("topk_k1_smallest", ties((4, 9), 3, 5), 1, axis=-1, largest=0)
    topk("topk_kn", ties((2, 7), 3, 6), 7, axis=1)
    topk("topk_kn_smallest", ties((2, 7), 3, 7), 7, axis=1, largest=0)
    topk("topk_unsorted", ties((3, 10), 4, 8), 6, axis=1, sorted_=0)
    special = np.array(
        [[1, 3, np.nan, 3, -np.inf, 2, np.inf, np.nan], [0, -0.0, np.inf, 5, 5, np.nan, -np.inf, 1]],
        dtype=np.float32,
    )
    topk("topk_nan", special, 8, axis=1)
    topk("topk_nan_smallest", special, 8, axis=1, largest=0)
    topk("topk_int32", ties((2, 9), 5, 9) - 2, 4, axis=1, largest=0, cast=T.INT32)
    topk("topk_opset10", ties((3, 6), 3, 10), 2, axis=-1, opset=10)
    gather_elements_neg()


if __name__ == "__main__":
    main()
