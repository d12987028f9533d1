#!/usr/bin/env python3
"""OpenVINO on vitc's IR v11 (`vitc MODEL.onnx --target openvino -o DIR`) against OpenVINO
reading the original ONNX, one run: same process, one inference thread, f32 inference
precision, LATENCY hint; min and median of many timed inferences after a warm-up.

usage: bench/interop_openvino.py MODEL.onnx OUR.xml INPUT.npy [--iters N] [--warmup N]
Prints one line per form and the ratio ours / original (median and min); exit status 0.
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


def bench(core, path, x, iters, warmup):
    cm = core.compile_model(core.read_model(path), "CPU", CONFIG)
    req = cm.create_infer_request()
    for _ in range(warmup):
        req.infer([x])
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        req.infer([x])
        times.append(time.perf_counter() - t)
    out = np.array(req.get_output_tensor(0).data, copy=True)
    return min(times), statistics.median(times), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("onnx")
    ap.add_argument("xml")
    ap.add_argument("input")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    a = ap.parse_args()
    x = np.load(a.input)
    core = ov.Core()
    # Alternate the two forms so drift in the machine's state hits both alike.
    res = {"onnx": [], "ours": []}
    outs = {}
    for _ in range(3):
        for key, path in (("onnx", a.onnx), ("ours", a.xml)):
            mn, med, out = bench(core, path, x, a.iters // 3 + 1, a.warmup)
            res[key].append((mn, med))
            outs[key] = out
    summary = {}
    for key in ("onnx", "ours"):
        mn = min(r[0] for r in res[key])
        med = statistics.median(r[1] for r in res[key])
        summary[key] = (mn, med)
        print(f"{key:5s} min {mn * 1e3:8.3f} ms  median {med * 1e3:8.3f} ms")
    d = float(np.max(np.abs(outs["ours"] - outs["onnx"])))
    print(f"ratio ours/onnx: median {summary['ours'][1] / summary['onnx'][1]:.3f}  "
          f"min {summary['ours'][0] / summary['onnx'][0]:.3f}  (max|d| between them {d:.2e})")


if __name__ == "__main__":
    main()
