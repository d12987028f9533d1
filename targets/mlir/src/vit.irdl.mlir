// The vit dialect in IRDL, written by vitc (load with `mlir-opt-22 --irdl-file=vit.irdl.mlir`).
// Each op of the vit IR (docs/ir.md) takes its operands in the order the IR documents and gives
// one tensor; optional operands are `optional` (ops with them carry operandSegmentSizes), and
// vit.concat takes up to 16. Attributes are carried as vitc prints them.
irdl.dialect @vit {
  irdl.operation @constant {
    %t0 = irdl.base "!builtin.tensor"
    irdl.operands()
    irdl.results(out: %t0)
  }
  irdl.operation @neg {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0)
    irdl.results(out: %t1)
  }
  irdl.operation @abs {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0)
    irdl.results(out: %t1)
  }
  irdl.operation @sqrt {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0)
    irdl.results(out: %t1)
  }
  irdl.operation @rsqrt {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0)
    irdl.results(out: %t1)
  }
  irdl.operation @reciprocal {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0)
    irdl.results(out: %t1)
  }
  irdl.operation @exp {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0)
    irdl.results(out: %t1)
  }
  irdl.operation @log {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0)
    irdl.results(out: %t1)
  }
  irdl.operation @erf {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0)
    irdl.results(out: %t1)
  }
  irdl.operation @tanh {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0)
    irdl.results(out: %t1)
  }
  irdl.operation @sigmoid {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0)
    irdl.results(out: %t1)
  }
  irdl.operation @relu {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0)
    irdl.results(out: %t1)
  }
  irdl.operation @hard_swish {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0)
    irdl.results(out: %t1)
  }
  irdl.operation @hard_sigmoid {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0)
    irdl.results(out: %t1)
  }
  irdl.operation @silu {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0)
    irdl.results(out: %t1)
  }
  irdl.operation @floor {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0)
    irdl.results(out: %t1)
  }
  irdl.operation @ceil {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0)
    irdl.results(out: %t1)
  }
  irdl.operation @round {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0)
    irdl.results(out: %t1)
  }
  irdl.operation @not {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0)
    irdl.results(out: %t1)
  }
  irdl.operation @clip {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0)
    irdl.results(out: %t1)
  }
  irdl.operation @cast {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0)
    irdl.results(out: %t1)
  }
  irdl.operation @reduce_sum {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0)
    irdl.results(out: %t1)
  }
  irdl.operation @reduce_mean {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0)
    irdl.results(out: %t1)
  }
  irdl.operation @reduce_max {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0)
    irdl.results(out: %t1)
  }
  irdl.operation @reduce_min {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0)
    irdl.results(out: %t1)
  }
  irdl.operation @reduce_prod {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0)
    irdl.results(out: %t1)
  }
  irdl.operation @softmax {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0)
    irdl.results(out: %t1)
  }
  irdl.operation @reshape {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0)
    irdl.results(out: %t1)
  }
  irdl.operation @broadcast {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0)
    irdl.results(out: %t1)
  }
  irdl.operation @transpose {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0)
    irdl.results(out: %t1)
  }
  irdl.operation @slice {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0)
    irdl.results(out: %t1)
  }
  irdl.operation @pad {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0)
    irdl.results(out: %t1)
  }
  irdl.operation @gelu {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0)
    irdl.results(out: %t1)
  }
  irdl.operation @add {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    %t2 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0, x1: %t1)
    irdl.results(out: %t2)
  }
  irdl.operation @sub {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    %t2 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0, x1: %t1)
    irdl.results(out: %t2)
  }
  irdl.operation @mul {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    %t2 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0, x1: %t1)
    irdl.results(out: %t2)
  }
  irdl.operation @div {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    %t2 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0, x1: %t1)
    irdl.results(out: %t2)
  }
  irdl.operation @pow {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    %t2 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0, x1: %t1)
    irdl.results(out: %t2)
  }
  irdl.operation @mod {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    %t2 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0, x1: %t1)
    irdl.results(out: %t2)
  }
  irdl.operation @max {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    %t2 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0, x1: %t1)
    irdl.results(out: %t2)
  }
  irdl.operation @min {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    %t2 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0, x1: %t1)
    irdl.results(out: %t2)
  }
  irdl.operation @equal {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    %t2 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0, x1: %t1)
    irdl.results(out: %t2)
  }
  irdl.operation @less {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    %t2 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0, x1: %t1)
    irdl.results(out: %t2)
  }
  irdl.operation @greater {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    %t2 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0, x1: %t1)
    irdl.results(out: %t2)
  }
  irdl.operation @and {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    %t2 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0, x1: %t1)
    irdl.results(out: %t2)
  }
  irdl.operation @or {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    %t2 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0, x1: %t1)
    irdl.results(out: %t2)
  }
  irdl.operation @matmul {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    %t2 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0, x1: %t1)
    irdl.results(out: %t2)
  }
  irdl.operation @gather {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    %t2 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0, x1: %t1)
    irdl.results(out: %t2)
  }
  irdl.operation @gather_elements {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    %t2 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0, x1: %t1)
    irdl.results(out: %t2)
  }
  irdl.operation @where {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    %t2 = irdl.base "!builtin.tensor"
    %t3 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0, x1: %t1, x2: %t2)
    irdl.results(out: %t3)
  }
  irdl.operation @quantize {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    %t2 = irdl.base "!builtin.tensor"
    %t3 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0, x1: %t1, x2: %t2)
    irdl.results(out: %t3)
  }
  irdl.operation @dequantize {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    %t2 = irdl.base "!builtin.tensor"
    %t3 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0, x1: %t1, x2: %t2)
    irdl.results(out: %t3)
  }
  irdl.operation @conv {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    %t2 = irdl.base "!builtin.tensor"
    %t3 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0, x1: %t1, x2: optional %t2)
    irdl.results(out: %t3)
  }
  irdl.operation @layer_norm {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    %t2 = irdl.base "!builtin.tensor"
    %t3 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0, x1: %t1, x2: optional %t2)
    irdl.results(out: %t3)
  }
  irdl.operation @linear {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    %t2 = irdl.base "!builtin.tensor"
    %t3 = irdl.base "!builtin.tensor"
    %t4 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0, x1: %t1, x2: optional %t2, x3: optional %t3)
    irdl.results(out: %t4)
  }
  irdl.operation @attention {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    %t2 = irdl.base "!builtin.tensor"
    %t3 = irdl.base "!builtin.tensor"
    %t4 = irdl.base "!builtin.tensor"
    %t5 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0, x1: %t1, x2: %t2, x3: optional %t3, x4: optional %t4)
    irdl.results(out: %t5)
  }
  irdl.operation @linear_attention {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    %t2 = irdl.base "!builtin.tensor"
    %t3 = irdl.base "!builtin.tensor"
    irdl.operands(q: %t0, k: %t1, v: %t2)
    irdl.results(out: %t3)
  }
  irdl.operation @qlinear {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    %t2 = irdl.base "!builtin.tensor"
    %t3 = irdl.base "!builtin.tensor"
    %t4 = irdl.base "!builtin.tensor"
    %t5 = irdl.base "!builtin.tensor"
    irdl.operands(x0: %t0, x1: %t1, x2: %t2, x3: %t3, x4: optional %t4)
    irdl.results(out: %t5)
  }
  irdl.operation @concat {
    %t0 = irdl.base "!builtin.tensor"
    %t1 = irdl.base "!builtin.tensor"
    %t2 = irdl.base "!builtin.tensor"
    %t3 = irdl.base "!builtin.tensor"
    %t4 = irdl.base "!builtin.tensor"
    %t5 = irdl.base "!builtin.tensor"
    %t6 = irdl.base "!builtin.tensor"
    %t7 = irdl.base "!builtin.tensor"
    %t8 = irdl.base "!builtin.tensor"
    %t9 = irdl.base "!builtin.tensor"
    %t10 = irdl.base "!builtin.tensor"
    %t11 = irdl.base "!builtin.tensor"
    %t12 = irdl.base "!builtin.tensor"
    %t13 = irdl.base "!builtin.tensor"
    %t14 = irdl.base "!builtin.tensor"
    %t15 = irdl.base "!builtin.tensor"
    %t16 = irdl.base "!builtin.tensor"
    irdl.operands(x0: optional %t0, x1: optional %t1, x2: optional %t2, x3: optional %t3, x4: optional %t4, x5: optional %t5, x6: optional %t6, x7: optional %t7, x8: optional %t8, x9: optional %t9, x10: optional %t10, x11: optional %t11, x12: optional %t12, x13: optional %t13, x14: optional %t14, x15: optional %t15)
    irdl.results(out: %t16)
  }
}
