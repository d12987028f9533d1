//! The import driver: graph inputs (with static shapes from the model or the caller),
//! initializers, then every node in file order through the op registry, then the outputs.
//!
//! It owns the ONNX-name → IR-value map and the checks that span nodes: inputs that are
//! defined, optional outputs that nothing uses, declared output shapes. It finishes with
//! dead-code removal and the IR verifier. It does no file I/O beyond external data.

use crate::attrs::Attrs;
use crate::ctx::Ctx;
use crate::error::OnnxError;
use crate::load::{declared, dtype_of, read_tensor, Dim};
use crate::ops::registry;
use crate::ImportOptions;
use onnx_protobuf::{ModelProto, ValueInfoProto};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use vitc_ir::types::checked_numel;
use vitc_ir::{Module, TensorType, ValueId};

/// The oldest default-domain opset whose semantics the import functions implement (opset 7
/// introduced numpy broadcasting, which every binary op here assumes).
pub(crate) const MIN_OPSET: i64 = 7;

fn opset_of(model: &ModelProto, domain: &str) -> Option<i64> {
    let is_default = |d: &str| d.is_empty() || d == "ai.onnx";
    model
        .opset_import
        .iter()
        .find(|o| {
            if is_default(domain) {
                is_default(&o.domain)
            } else {
                o.domain == domain
            }
        })
        .map(|o| o.version)
}

pub(crate) fn import_model(
    model: &ModelProto,
    model_dir: Option<&Path>,
    name: &str,
    opts: &ImportOptions,
) -> Result<Module, OnnxError> {
    if opts.batch == Some(0) {
        return Err(OnnxError::BadBatch {
            batch: 0,
            msg: "the batch size must be at least 1".into(),
        });
    }
    let graph = model.graph.as_ref().ok_or_else(|| OnnxError::NoGraph {
        model: name.to_string(),
    })?;
    let opset = opset_of(model, "").ok_or_else(|| OnnxError::Opset {
        msg: format!("{name} imports no ai.onnx opset, so its ops have no defined meaning"),
    })?;
    if opset < MIN_OPSET {
        return Err(OnnxError::Opset {
            msg: format!(
                "{name} uses ai.onnx opset {opset}; vitc reads opset {MIN_OPSET} and later \
                 (convert it with onnx.version_converter)"
            ),
        });
    }
    if !graph.sparse_initializer.is_empty() {
        return Err(OnnxError::Tensor {
            tensor: graph.sparse_initializer[0]
                .values
                .as_ref()
                .map(|v| v.name.clone())
                .unwrap_or_default(),
            msg: "sparse initializers are not supported".into(),
        });
    }

    let mut m = Module::new(name);
    let mut values: HashMap<String, ValueId> = HashMap::new();
    let init_names: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    // Older exporters list initializers among the inputs too; those are weights, not inputs.
    let real_inputs: Vec<&ValueInfoProto> = graph
        .input
        .iter()
        .filter(|i| !init_names.contains(i.name.as_str()))
        .collect();
    for (given, _) in &opts.input_shapes {
        if !real_inputs.iter().any(|i| &i.name == given) {
            let names: Vec<&str> = real_inputs.iter().map(|i| i.name.as_str()).collect();
            return Err(OnnxError::UnknownInput {
                name: given.clone(),
                inputs: names.join(", "),
            });
        }
    }
    for inp in &real_inputs {
        let ty = input_type(inp, opts)?;
        let v = m.add_input(inp.name.clone(), ty);
        values.insert(inp.name.clone(), v);
    }
    for t in &graph.initializer {
        let tensor = read_tensor(t, model_dir)?;
        let v = m.add_constant(&t.name, tensor);
        values.insert(t.name.clone(), v);
    }

    // Names something reads, to tell an unused optional output from a used unsupported one.
    let used: HashSet<&str> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .chain(graph.output.iter().map(|o| o.name.as_str()))
        .collect();
    let reg = registry();
    for (idx, node) in graph.node.iter().enumerate() {
        let display = if !node.name.is_empty() {
            node.name.clone()
        } else if let Some(o) = node.output.iter().find(|o| !o.is_empty()) {
            o.clone()
        } else {
            format!("#{idx}")
        };
        let default_domain = node.domain.is_empty() || node.domain == "ai.onnx";
        let unsupported = |domain: &str, opset: i64| OnnxError::UnsupportedOp {
            node: display.clone(),
            op_type: node.op_type.clone(),
            domain: domain.to_string(),
            opset,
        };
        if !default_domain {
            let v = opset_of(model, &node.domain).unwrap_or(0);
            return Err(unsupported(&node.domain, v));
        }
        let f = *reg
            .get(node.op_type.as_str())
            .ok_or_else(|| unsupported("ai.onnx", opset))?;
        let outs = {
            let mut cx = Ctx {
                m: &mut m,
                values: &values,
                node,
                name: &display,
                opset,
                attrs: Attrs::new(&node.attribute),
                model_dir,
            };
            f(&mut cx)?
        };
        for (i, oname) in node.output.iter().enumerate() {
            if oname.is_empty() {
                continue;
            }
            match outs.get(i) {
                Some(&v) => {
                    values.insert(oname.clone(), v);
                }
                None if used.contains(oname.as_str()) => {
                    return Err(OnnxError::Node {
                        node: display.clone(),
                        op_type: node.op_type.clone(),
                        msg: format!(
                            "output {i} ('{oname}') is used, but only the first {} output(s) of {} are supported",
                            outs.len(),
                            node.op_type
                        ),
                    });
                }
                None => {}
            }
        }
    }

    for o in &graph.output {
        let v = *values.get(&o.name).ok_or_else(|| OnnxError::GraphValue {
            kind: "output",
            name: o.name.clone(),
            msg: "no node, initializer or input produces it".into(),
        })?;
        check_output_shape(o, m.ty(v))?;
        m.outputs.push((o.name.clone(), v));
    }
    if m.outputs.is_empty() {
        return Err(OnnxError::GraphValue {
            kind: "output",
            name: String::new(),
            msg: "the graph has no outputs".into(),
        });
    }
    m.dce();
    vitc_ir::verify(&m).map_err(OnnxError::Verify)?;
    match opts.batch {
        Some(n) if n > 1 => {
            let mut b = crate::batch::rebatch(&m, n)?;
            b.dce();
            vitc_ir::verify(&b).map_err(OnnxError::Verify)?;
            Ok(b)
        }
        _ => Ok(m),
    }
}

fn shape_text(dims: &[Dim]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| match d {
            Dim::Static(v) => v.to_string(),
            Dim::Dynamic(p) => p.trim_matches('\'').to_string(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// A graph input's static type: the model's dims, with dynamic ones (and any others, which
/// must agree) taken from `--input-shape`.
fn input_type(inp: &ValueInfoProto, opts: &ImportOptions) -> Result<TensorType, OnnxError> {
    let name = &inp.name;
    let gv = |msg: String| OnnxError::GraphValue {
        kind: "input",
        name: name.clone(),
        msg,
    };
    let decl = declared(inp).map_err(gv)?;
    let dtype = dtype_of(decl.elem_type).map_err(gv)?;
    let given = opts
        .input_shapes
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, s)| s);
    let shape: Vec<usize> = match (given, &decl.shape) {
        (Some(g), Some(dims)) => {
            let given_text = g
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("x");
            let mismatch = |msg: String| OnnxError::InputShapeMismatch {
                input: name.clone(),
                given: given_text.clone(),
                msg,
            };
            if g.len() != dims.len() {
                return Err(mismatch(format!(
                    "the model declares rank {} ({})",
                    dims.len(),
                    shape_text(dims)
                )));
            }
            for (i, (d, &gd)) in dims.iter().zip(g.iter()).enumerate() {
                if let Dim::Static(v) = d {
                    if *v != gd {
                        return Err(mismatch(format!(
                            "dim {i} is {v} in the model ({}), not {gd}",
                            shape_text(dims)
                        )));
                    }
                }
            }
            g.clone()
        }
        (Some(g), None) => g.clone(),
        (None, Some(dims)) => {
            let mut out = Vec::with_capacity(dims.len());
            for (i, d) in dims.iter().enumerate() {
                match d {
                    Dim::Static(v) => out.push(*v),
                    // With --batch the model is imported at batch 1 and rewritten afterwards.
                    Dim::Dynamic(_) if i == 0 && opts.batch.is_some() => out.push(1),
                    Dim::Dynamic(p) => {
                        let example: Vec<String> = dims
                            .iter()
                            .map(|d| match d {
                                Dim::Static(v) => v.to_string(),
                                Dim::Dynamic(_) => "1".into(),
                            })
                            .collect();
                        return Err(OnnxError::DynamicInput {
                            input: name.clone(),
                            dim: i,
                            param: p.clone(),
                            example: example.join("x"),
                        });
                    }
                }
            }
            out
        }
        (None, None) => {
            return Err(gv(format!(
                "the model declares no shape for it; give one with --input-shape {name}=1x3x224x224"
            )))
        }
    };
    if checked_numel(&shape).is_none() {
        return Err(OnnxError::ShapeOverflow {
            what: format!("graph input '{name}'"),
            shape: crate::error::dims_i64(&shape),
        });
    }
    Ok(TensorType::new(shape, dtype))
}

/// Compare an output's inferred shape with its declared one where the declaration is static.
fn check_output_shape(o: &ValueInfoProto, ty: &TensorType) -> Result<(), OnnxError> {
    // An output without a usable declaration has nothing to check against.
    let Ok(decl) = declared(o) else {
        return Ok(());
    };
    let Some(dims) = decl.shape else {
        return Ok(());
    };
    let ok = dims.len() == ty.rank()
        && dims.iter().zip(&ty.shape).all(|(d, &s)| match d {
            Dim::Static(v) => *v == s,
            Dim::Dynamic(_) => true,
        });
    if ok {
        return Ok(());
    }
    Err(OnnxError::OutputShape {
        output: o.name.clone(),
        declared: shape_text(&dims),
        inferred: format!("{:?}", ty.shape),
    })
}
