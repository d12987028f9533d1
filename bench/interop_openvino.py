#!/usr/bin/env python3
"""OpenVINO on vitc's IR v11 (`vitc MODEL.onnx --target openvino -o DIR`) against OpenVINO
reading the original ONNX, one run: same process, one inference thread, f32 inference
precision, LATENCY hint; min and median of many timed inferences after a warm-up.

The two compiled models are timed in alternation, one inference each (the order swapped every
pair), so load from other work on a shared machine falls on both alike; the ratio is also given
as the median of the per-pair ratios, which such load moves least.

usage: bench/interop_openvino.py MODEL.onnx OUR.xml INPUT.npy [--iters N] [--warmup N]
Prints one line per form and the ratio ours / original; exit status 0.
"""
import argparse
import statistics
import time

import numpy as np
import openvino as ov

CONFIG = {
    "INFERENCE_NUM_THREADS": "1",
    "INFERENCE_PRECISION_HINT": "f32",
    "PERFORMANCE_HINT": "LATENCY",
}


def timed(req, x):
    t = time.perf_counter()
    req.infer([x])
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("onnx")
    ap.add_argument("xml")
    ap.add_argument("input")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    a = ap.parse_args()
    x = np.load(a.input)
    core = ov.Core()
    reqs = {}
    for key, path in (("onnx", a.onnx), ("ours", a.xml)):
        cm = core.compile_model(core.read_model(path), "CPU", CONFIG)
        reqs[key] = cm.create_infer_request()
    for _ in range(a.warmup):
        for req in reqs.values():
            req.infer([x])
    times = {"onnx": [], "ours": []}
    for i in range(a.iters):
        order = ("onnx", "ours") if i % 2 == 0 else ("ours", "onnx")
        for key in order:
            times[key].append(timed(reqs[key], x))
    outs = {k: np.array(r.get_output_tensor(0).data, copy=True) for k, r in reqs.items()}
    summary = {}
    for key in ("onnx", "ours"):
        mn, med = min(times[key]), statistics.median(times[key])
        summary[key] = (mn, med)
        print(f"{key:5s} min {mn * 1e3:8.3f} ms  median {med * 1e3:8.3f} ms")
    pair = statistics.median(o / r for o, r in zip(times["ours"], times["onnx"]))
    d = float(np.max(np.abs(outs["ours"] - outs["onnx"])))
    print(f"ratio ours/onnx: median {summary['ours'][1] / summary['onnx'][1]:.3f}  "
          f"min {summary['ours'][0] / summary['onnx'][0]:.3f}  pairwise median {pair:.3f}  "
          f"(max|d| between them {d:.2e})")


if __name__ == "__main__":
    main()
