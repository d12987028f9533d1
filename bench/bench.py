#!/usr/bin/env python3
"""vitc against onnxruntime and OpenVINO, in one run, on the same input and thread counts.

For each model and each thread count T it times:
  - the vitc library (compiled here with `vitc MODEL -o lib.so`), called through ctypes with the
    runtime crate's pool (`vitc_rt_pool_new(T)`, `vitc_rt_parallel_for`);
  - onnxruntime: CPUExecutionProvider, ORT_ENABLE_ALL, intra_op_num_threads = T, inter_op 1;
  - OpenVINO: CPU, INFERENCE_PRECISION_HINT=f32, INFERENCE_NUM_THREADS=T, PERFORMANCE_HINT=LATENCY
    (`--openvino-precision default` leaves the hint out: OpenVINO then picks bf16 on a CPU with
    AVX512-BF16 or AMX).
`--precision bf16|fp16` compiles vitc with that `--precision` (bf16 weights need the
x86_64-avx512-bf16 target: `--target auto` picks it then).
The engines take turns in short bursts (round-robin, `--rounds` × `--iters` runs each), so load
from elsewhere on a shared machine falls on all of them alike. It prints min and median ms per
engine, the ratios vitc/peer, vitc's GFLOP/s and its share of the FMA peak that a small probe
(`fma_probe.c`) measures on this machine for the same T. `--json` prints the same as JSON.

    .venv/bin/python bench/bench.py                       # deit_tiny, digits_vit, mobilevit_xxs
    .venv/bin/python bench/bench.py --models deit_tiny --threads 1,2 --rounds 20 --json

Models come from --models-dir (default $VITC_MODELS, else ../shared/models, else tests/models);
each needs MODEL.onnx and MODEL.input.npy beside it. The script builds vitc and the runtime in
release mode first (`--no-build` skips that).
"""

import argparse
import ctypes
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def host_has(flag):
    try:
        with open("/proc/cpuinfo") as f:
            return any(flag in line.split() for line in f if line.startswith("flags"))
    except OSError:
        return False


def default_models_dir():
    env = os.environ.get("VITC_MODELS")
    if env:
        return env
    shared = os.path.join(ROOT, "..", "shared", "models")
    if os.path.isdir(shared):
        return shared
    return os.path.join(ROOT, "tests", "models")


def build():
    log("building vitc and the runtime (release) ...")
    subprocess.run(
        ["cargo", "build", "--release", "-q", "-p", "vitc", "-p", "vitc-runtime"],
        cwd=ROOT,
        check=True,
    )


def fma_peak(target, threads, tmp):
    """GFLOP/s of `threads` threads running FMAs of the target's width, or None."""
    cc = next((c for c in ("clang-22", "clang", "cc", "gcc") if shutil.which(c)), None)
    if cc is None:
        return None
    exe = os.path.join(tmp, f"fma_probe_{target}")
    if not os.path.exists(exe):
        width = "512" if target.startswith("x86_64-avx512") else "256"
        src = os.path.join(ROOT, "bench", "fma_probe.c")
        r = subprocess.run(
            [cc, "-O2", "-pthread", f"-DWIDTH={width}", src, "-o", exe],
            capture_output=True,
        )
        if r.returncode != 0:
            return None
    r = subprocess.run([exe, str(threads)], capture_output=True, text=True)
    try:
        return float(r.stdout.strip())
    except ValueError:
        return None


class VitcLib:
    """A compiled model loaded with ctypes, run through the runtime's pool."""

    def __init__(self, so, runtime, threads, x):
        self.lib = ctypes.CDLL(so)
        rt = runtime
        rt.vitc_rt_pool_new.restype = ctypes.c_void_p
        rt.vitc_rt_pool_new.argtypes = [ctypes.c_uint32]
        rt.vitc_rt_pool_free.argtypes = [ctypes.c_void_p]
        self.rt = rt
        self.pool = rt.vitc_rt_pool_new(threads)
        if not self.pool:
            raise RuntimeError("vitc_rt_pool_new failed")

        class Exec(ctypes.Structure):
            _fields_ = [("parallel_for", ctypes.c_void_p), ("pool", ctypes.c_void_p)]

        pf = ctypes.cast(rt.vitc_rt_parallel_for, ctypes.c_void_p).value
        self.exec = Exec(pf, self.pool)
        L = self.lib
        L.vitc_workspace_size.restype = ctypes.c_size_t
        L.vitc_num_outputs.restype = ctypes.c_uint32
        L.vitc_output_rank.restype = ctypes.c_uint32
        L.vitc_output_rank.argtypes = [ctypes.c_uint32]
        L.vitc_output_shape.restype = ctypes.POINTER(ctypes.c_int64)
        L.vitc_output_shape.argtypes = [ctypes.c_uint32]
        L.vitc_run.restype = ctypes.c_int32
        L.vitc_run.argtypes = [ctypes.c_void_p] * 4
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.outs = []
        for i in range(L.vitc_num_outputs()):
            r = L.vitc_output_rank(i)
            sh = L.vitc_output_shape(i)
            self.outs.append(np.zeros([sh[k] for k in range(r)], dtype=np.float32))
        ws = L.vitc_workspace_size()
        self.ws_buf = np.zeros(ws + 128, dtype=np.uint8)
        base = self.ws_buf.ctypes.data
        self.ws = base + (-base) % 64
        self.ins = (ctypes.c_void_p * 1)(self.x.ctypes.data)
        self.outp = (ctypes.c_void_p * len(self.outs))(*[o.ctypes.data for o in self.outs])
        self.exec_p = ctypes.addressof(self.exec)
        self.run = L.vitc_run

    def __call__(self):
        rc = self.run(self.ins, self.outp, self.ws, self.exec_p)
        if rc != 0:
            raise RuntimeError(f"vitc_run returned {rc}")
        return self.outs[0]

    def close(self):
        self.rt.vitc_rt_pool_free(self.pool)
        self.pool = None


def ort_runner(path, threads, x):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feed = {s.get_inputs()[0].name: x}
    return lambda: s.run(None, feed)[0]


def ov_runner(path, threads, x, precision="f32"):
    import openvino as ov

    core = ov.Core()
    cfg = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if precision != "default":
        cfg["INFERENCE_PRECISION_HINT"] = precision
    c = core.compile_model(path, "CPU", cfg)
    r = c.create_infer_request()
    r.set_input_tensor(ov.Tensor(x))
    out = c.outputs[0]

    def run():
        r.infer()
        return r.get_tensor(out).data

    return run


def time_engines(engines, rounds, iters):
    """Round-robin bursts: every engine runs `iters` times per round, the order rotating."""
    samples = {name: [] for name in engines}
    names = list(engines)
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            f = engines[name]
            for _ in range(iters):
                t0 = time.perf_counter()
                f()
                samples[name].append((time.perf_counter() - t0) * 1e3)
    return samples


def model_flops(vitc, path):
    r = subprocess.run([vitc, "inspect", path], capture_output=True, text=True)
    m = re.search(r"^flops\s+([\d.]+)\s+([kMGT]?)FLOP", r.stdout, re.M)
    if not m:
        return None
    scale = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}[m.group(2)]
    return float(m.group(1)) * scale


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="deit_tiny,digits_vit,mobilevit_xxs")
    ap.add_argument("--models-dir", default=default_models_dir())
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=12, help="round-robin rounds")
    ap.add_argument("--iters", type=int, default=0, help="runs per burst (0: by model size)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument(
        "--target",
        default="auto",
        help="vitc target (auto: x86_64-avx512-vnni, x86_64-avx512 or x86_64-avx2, the best the host has)",
    )
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument(
        "--precision",
        default="f32",
        choices=["f32", "bf16", "fp16"],
        help="vitc --precision (how the linears' weights are stored)",
    )
    ap.add_argument(
        "--openvino-precision",
        default="f32",
        help="OpenVINO INFERENCE_PRECISION_HINT (f32, bf16, f16) or `default` (no hint)",
    )
    args = ap.parse_args()

    if args.target == "auto" and args.precision == "bf16":
        args.target = "x86_64-avx512-bf16"
    if args.target == "auto":
        if host_has("avx512f"):
            args.target = "x86_64-avx512-vnni" if host_has("avx512_vnni") else "x86_64-avx512"
        else:
            args.target = "x86_64-avx2"
    if not args.no_build:
        build()
    vitc = os.path.join(ROOT, "target", "release", "vitc")
    runtime = ctypes.CDLL(os.path.join(ROOT, "target", "release", "libvitc_runtime.so"))
    threads = [int(t) for t in args.threads.split(",")]
    tmp = tempfile.mkdtemp(prefix="vitc-bench-")
    results = {
        "target": args.target,
        "precision": args.precision,
        "openvino_precision": args.openvino_precision,
        "cpu": next(
            (l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
            "?",
        ),
        "fma_peak_gflops": {},
        "models": [],
    }
    try:
        for t in threads:
            results["fma_peak_gflops"][str(t)] = fma_peak(args.target, t, tmp)
        for name in args.models.split(","):
            path = os.path.join(args.models_dir, f"{name}.onnx")
            x = np.load(os.path.join(args.models_dir, f"{name}.input.npy")).astype(np.float32)
            so = os.path.join(tmp, f"{name}.so")
            t0 = time.perf_counter()
            subprocess.run(
                [vitc, path, "-o", so, "--target", args.target, "--precision", args.precision],
                check=True,
                capture_output=True,
            )
            compile_s = time.perf_counter() - t0
            flops = model_flops(vitc, path)
            entry = {"model": name, "compile_s": compile_s, "flops": flops, "runs": []}
            log(f"{name}: compiled in {compile_s:.2f} s, {flops / 1e9 if flops else 0:.3f} GFLOP")
            for t in threads:
                v = VitcLib(so, runtime, t, x)
                engines = {
                    "vitc": v,
                    "onnxruntime": ort_runner(path, t, x),
                    "openvino": ov_runner(path, t, x, args.openvino_precision),
                }
                ref = engines["onnxruntime"]()
                diff = float(np.max(np.abs(v() - ref)))
                for f in engines.values():
                    for _ in range(args.warmup):
                        f()
                # Bursts of about 50 ms, at least 3 runs.
                iters = args.iters
                if iters <= 0:
                    t0 = time.perf_counter()
                    v()
                    iters = max(3, min(50, int(0.05 / max(time.perf_counter() - t0, 1e-6))))
                s = time_engines(engines, args.rounds, iters)
                v.close()
                run = {"threads": t, "max_abs_diff_vs_onnxruntime": diff, "engines": {}}
                for e, ts in s.items():
                    run["engines"][e] = {
                        "min_ms": min(ts),
                        "median_ms": statistics.median(ts),
                        "samples": len(ts),
                    }
                vm = run["engines"]["vitc"]
                for peer in ("onnxruntime", "openvino"):
                    pm = run["engines"][peer]
                    run[f"vitc_over_{peer}"] = {
                        "min": vm["min_ms"] / pm["min_ms"],
                        "median": vm["median_ms"] / pm["median_ms"],
                    }
                peak = results["fma_peak_gflops"].get(str(t))
                if flops:
                    g = flops / (vm["min_ms"] * 1e6)
                    run["vitc_gflops"] = g
                    run["vitc_peak_share"] = g / peak if peak else None
                entry["runs"].append(run)
            results["models"].append(entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"target {results['target']} precision {results['precision']} "
        f"(OpenVINO {results['openvino_precision']}) on {results['cpu']}"
    )
    print(
        "FMA peak (probe): "
        + ", ".join(
            f"T={t}: {p:.1f} GFLOP/s" if p else f"T={t}: n/a"
            for t, p in results["fma_peak_gflops"].items()
        )
    )
    hdr = (
        f"{'model':<14} {'T':>2} {'engine':<12} {'min ms':>8} {'median':>8} "
        f"{'vitc/peer min':>13} {'median':>7}"
    )
    print(hdr)
    print("-" * len(hdr))
    for m in results["models"]:
        for run in m["runs"]:
            for e, r in run["engines"].items():
                ratio = ""
                if e != "vitc":
                    q = run[f"vitc_over_{e}"]
                    ratio = f"{q['min']:>13.3f} {q['median']:>7.3f}"
                print(
                    f"{m['model']:<14} {run['threads']:>2} {e:<12} {r['min_ms']:>8.3f} "
                    f"{r['median_ms']:>8.3f} {ratio}"
                )
            g = run.get("vitc_gflops")
            share = run.get("vitc_peak_share")
            extra = f"vitc {g:.1f} GFLOP/s" if g else ""
            if share:
                extra += f", {100 * share:.0f}% of the FMA peak"
            print(
                f"{'':<14} {'':>2} {extra}; max |vitc - onnxruntime| = "
                f"{run['max_abs_diff_vs_onnxruntime']:.2e}"
            )
        print(f"{m['model']}: compile {m['compile_s']:.2f} s")


if __name__ == "__main__":
    main()
