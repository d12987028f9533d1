//! The op registry: one line per ONNX op type, mapping it to its import function. Import
//! functions live in one file per topic; adding an op is one function there and one line here.
//! Only default-domain (ai.onnx) ops are registered; the driver refuses other domains.

mod constant;
mod elementwise;
mod linalg;
mod nn;
mod quant;
mod select;
mod shape;

use crate::ctx::ImportFn;
use std::collections::HashMap;

pub(crate) fn registry() -> HashMap<&'static str, ImportFn> {
    let mut reg: HashMap<&'static str, ImportFn> = HashMap::new();
    // Elementwise
    reg.insert("Abs", elementwise::abs);
    reg.insert("Add", elementwise::add);
    reg.insert("And", elementwise::and);
    reg.insert("Cast", elementwise::cast);
    reg.insert("Ceil", elementwise::ceil);
    reg.insert("Clip", elementwise::clip);
    reg.insert("Div", elementwise::div);
    reg.insert("Dropout", elementwise::dropout);
    reg.insert("Equal", elementwise::equal);
    reg.insert("Erf", elementwise::erf);
    reg.insert("Exp", elementwise::exp);
    reg.insert("Floor", elementwise::floor);
    reg.insert("Greater", elementwise::greater);
    reg.insert("HardSigmoid", elementwise::hard_sigmoid);
    reg.insert("HardSwish", elementwise::hard_swish);
    reg.insert("Identity", elementwise::identity);
    reg.insert("Less", elementwise::less);
    reg.insert("Log", elementwise::log);
    reg.insert("Max", elementwise::max);
    reg.insert("Min", elementwise::min);
    reg.insert("Mod", elementwise::modulo);
    reg.insert("Mul", elementwise::mul);
    reg.insert("Neg", elementwise::neg);
    reg.insert("Not", elementwise::not);
    reg.insert("Or", elementwise::or);
    reg.insert("Pow", elementwise::pow);
    reg.insert("Reciprocal", elementwise::reciprocal);
    reg.insert("Relu", elementwise::relu);
    reg.insert("Round", elementwise::round);
    reg.insert("Sigmoid", elementwise::sigmoid);
    reg.insert("Sqrt", elementwise::sqrt);
    reg.insert("Sub", elementwise::sub);
    reg.insert("Sum", elementwise::sum);
    reg.insert("Tanh", elementwise::tanh);
    reg.insert("Where", elementwise::where_);
    // Matrix products
    reg.insert("Gemm", linalg::gemm);
    reg.insert("MatMul", linalg::matmul);
    // Layers and reductions
    reg.insert("BatchNormalization", nn::batch_norm);
    reg.insert("Conv", nn::conv);
    reg.insert("GlobalAveragePool", nn::global_average_pool);
    reg.insert("LayerNormalization", nn::layer_norm);
    reg.insert("ReduceMax", nn::reduce_max);
    reg.insert("ReduceMean", nn::reduce_mean);
    reg.insert("ReduceMin", nn::reduce_min);
    reg.insert("ReduceProd", nn::reduce_prod);
    reg.insert("ReduceSum", nn::reduce_sum);
    reg.insert("Softmax", nn::softmax);
    // Shapes and data movement
    reg.insert("Concat", shape::concat);
    reg.insert("ConstantOfShape", shape::constant_of_shape);
    reg.insert("Expand", shape::expand);
    reg.insert("Flatten", shape::flatten);
    reg.insert("Gather", shape::gather);
    reg.insert("GatherElements", shape::gather_elements);
    reg.insert("GatherND", shape::gather_nd);
    reg.insert("Pad", shape::pad);
    reg.insert("Range", shape::range);
    reg.insert("Reshape", shape::reshape);
    reg.insert("Shape", shape::shape);
    reg.insert("Size", shape::size);
    reg.insert("Slice", shape::slice);
    reg.insert("Split", shape::split);
    reg.insert("Squeeze", shape::squeeze);
    reg.insert("Tile", shape::tile);
    reg.insert("Transpose", shape::transpose);
    reg.insert("Unsqueeze", shape::unsqueeze);
    // Selection
    reg.insert("TopK", select::top_k);
    // Constants and quantization
    reg.insert("Constant", constant::constant);
    reg.insert("DequantizeLinear", quant::dequantize_linear);
    reg.insert("QuantizeLinear", quant::quantize_linear);
    reg
}
