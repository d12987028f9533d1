#!/usr/bin/env python3
"""Helpers for gemm_mca.sh (standard library only).

  inner_loop.py model DIR M K N   write DIR/gemm.vit (+ .weights): one vit.linear, x[M×K]·W[K×N]+b
  inner_loop.py loop FILE.s       print the f32 GEMM inner loop of an aarch64 assembly file
  inner_loop.py fmla FILE.s       print "FMLA_Q F32_FMAS" counted in a loop body
  inner_loop.py cycles MCA.txt    print "ITERATIONS TOTAL_CYCLES MODEL" from llvm-mca's output

The inner loop is the innermost loop (a label and the backward branch to it, with no other loop
inside) that holds the most f32 FMA lanes: the k loop of the widest GEMM microkernel tile. It is
printed as instructions only (no labels or directives), ready for llvm-mca.
"""
import json
import random
import re
import struct
import sys


def model(out, m, k, n):
    random.seed(0)
    # Random nonzero weights: constants LLVM cannot fold away.
    tensors = {"fc.bias": [n], "fc.weight": [k, n]}
    header, data = {}, b""
    for name in sorted(tensors):
        count = 1
        for d in tensors[name]:
            count *= d
        b = struct.pack(f"<{count}f", *(random.uniform(-1, 1) for _ in range(count)))
        header[name] = {"dtype": "F32", "shape": tensors[name],
                        "data_offsets": [len(data), len(data) + len(b)]}
        data += b
    header["__metadata__"] = {"format": "vitc"}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(f"{out}/gemm.vit.weights", "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)
    x, w, y = f"tensor<1x{m}x{k}xf32>", f"tensor<{k}x{n}xf32>", f"tensor<1x{m}x{n}xf32>"
    with open(f"{out}/gemm.vit", "w") as f:
        f.write(f"""// One linear layer, x[{m}x{k}] . W[{k}x{n}] + b (deit_tiny's MLP fc1 shape).
module @gemm {{
  func.func @main(%x: {x}) -> {y} {{
    %w = vit.constant @"fc.weight" : {w}
    %b = vit.constant @"fc.bias" : tensor<{n}xf32>
    %y = vit.linear %x, %w, %b {{activation = "none", has_bias = true}} : ({x}, {w}, tensor<{n}xf32>) -> {y}
    return %y : {y}
  }}
}}
""")


LABEL = re.compile(r"^([.\w$]+):")
BRANCH = re.compile(r"^\s*(b(?:\.\w+)?|cbn?z|tbn?z)\s+(?:[^,]+,\s*)*([.\w$]+)\s*(?://.*)?$")


def fma_lanes(line):
    """(128-bit FMLAs, f32 FMA lanes) of one instruction."""
    ins = line.split("//")[0].strip()
    if ins.startswith("fmla") and ".4s" in ins:
        return 1, 4
    if ins.startswith("fmla") and ".2s" in ins:
        return 0, 2
    if re.match(r"fmadd\s+s\d", ins):
        return 0, 1
    return 0, 0


def instructions(lines):
    out = []
    for line in lines:
        s = line.split("//")[0].rstrip()
        if not s.strip() or s.strip().startswith(".") or LABEL.match(s.strip()):
            continue
        out.append(s)
    return out


def inner_loop(lines):
    labels = {}
    loops = []  # (start line of the label, line of the backward branch)
    for i, line in enumerate(lines):
        m = LABEL.match(line)
        if m:
            labels[m.group(1)] = i
            continue
        b = BRANCH.match(line)
        if b and b.group(2) in labels and labels[b.group(2)] < i:
            loops.append((labels[b.group(2)], i))
    innermost = [(s, e) for (s, e) in loops
                 if not any((s2, e2) != (s, e) and s <= s2 and e2 <= e for (s2, e2) in loops)]
    best, key = None, None
    for s, e in innermost:
        body = lines[s + 1:e + 1]
        lanes = sum(fma_lanes(l)[1] for l in body)
        k = (lanes, -len(body))
        if lanes and (key is None or k > key):
            best, key = body, k
    if best is None:
        sys.exit("inner_loop.py: no loop with f32 FMAs in the assembly")
    return instructions(best)


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "model" and len(sys.argv) == 6:
        model(sys.argv[2], *(int(a) for a in sys.argv[3:6]))
    elif cmd == "loop" and len(sys.argv) == 3:
        with open(sys.argv[2]) as f:
            print("\n".join(inner_loop(f.read().splitlines())))
    elif cmd == "fmla" and len(sys.argv) == 3:
        with open(sys.argv[2]) as f:
            counts = [fma_lanes(l) for l in f.read().splitlines()]
        print(sum(c[0] for c in counts), sum(c[1] for c in counts))
    elif cmd == "cycles" and len(sys.argv) == 3:
        with open(sys.argv[2]) as f:
            text = f.read()
        its = int(re.search(r"^Iterations:\s+(\d+)", text, re.M).group(1))
        cyc = int(re.search(r"^Total Cycles:\s+(\d+)", text, re.M).group(1))
        unit = re.search(r"^\[[\d.]+\]\s+-\s+([A-Za-z0-9]+?)Unit", text, re.M)
        print(its, cyc, unit.group(1) if unit else "?")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
