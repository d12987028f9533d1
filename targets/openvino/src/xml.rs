//! The IR v11 writer: layers with their output ports, the edges between them, and the
//! weights blob. It knows the file format and nothing about vit ops; shapes and element
//! types are the caller's.

use vitc_ir::{DType, Tensor, TensorType};

/// An output port: the layer that makes it, its port number, and its type.
#[derive(Clone, Debug)]
pub struct Port {
    layer: usize,
    port: usize,
    pub ty: TensorType,
}

struct Layer {
    name: String,
    kind: String,
    version: String,
    data: Vec<(String, String)>,
    inputs: Vec<Port>,
    /// Each output's type and the tensor names on it (none for `Result`).
    outputs: Vec<(TensorType, String)>,
}

/// Collects layers and weights; [`Builder::finish`] renders them.
pub struct Builder {
    name: String,
    layers: Vec<Layer>,
    bin: Vec<u8>,
}

/// The IR element-type spelling.
pub fn elem(t: DType) -> &'static str {
    match t {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::I8 => "i8",
        DType::U8 => "u8",
        DType::I32 => "i32",
        DType::I64 => "i64",
        DType::Bool => "boolean",
    }
}

fn precision(t: DType) -> &'static str {
    match t {
        DType::F32 => "FP32",
        DType::F16 => "FP16",
        DType::BF16 => "BF16",
        DType::I8 => "I8",
        DType::U8 => "U8",
        DType::I32 => "I32",
        DType::I64 => "I64",
        DType::Bool => "BOOL",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn shape_attr(s: &[usize]) -> String {
    s.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl Builder {
    pub fn new(name: &str) -> Builder {
        Builder {
            name: if name.is_empty() {
                "vitc".into()
            } else {
                name.into()
            },
            layers: Vec::new(),
            bin: Vec::new(),
        }
    }

    /// Add a layer with one output of type `ty`.
    pub fn layer(
        &mut self,
        kind: &str,
        version: &str,
        data: Vec<(String, String)>,
        inputs: Vec<Port>,
        ty: TensorType,
    ) -> Port {
        let id = self.layers.len();
        let port = inputs.len();
        self.layers.push(Layer {
            name: format!("{}_{id}", kind.to_lowercase()),
            kind: kind.into(),
            version: version.into(),
            data,
            inputs,
            outputs: vec![(ty.clone(), String::new())],
        });
        Port {
            layer: id,
            port,
            ty,
        }
    }

    /// Add a layer with several outputs.
    pub fn layer_multi(
        &mut self,
        kind: &str,
        version: &str,
        data: Vec<(String, String)>,
        inputs: Vec<Port>,
        tys: Vec<TensorType>,
    ) -> Vec<Port> {
        let id = self.layers.len();
        let first = inputs.len();
        self.layers.push(Layer {
            name: format!("{}_{id}", kind.to_lowercase()),
            kind: kind.into(),
            version: version.into(),
            data,
            inputs,
            outputs: tys.iter().map(|t| (t.clone(), String::new())).collect(),
        });
        tys.into_iter()
            .enumerate()
            .map(|(k, ty)| Port {
                layer: id,
                port: first + k,
                ty,
            })
            .collect()
    }

    pub fn parameter(&mut self, name: &str, ty: &TensorType) -> Port {
        let data = vec![
            ("shape".into(), shape_attr(&ty.shape)),
            ("element_type".into(), elem(ty.dtype).into()),
        ];
        let p = self.layer("Parameter", "opset1", data, vec![], ty.clone());
        let l = &mut self.layers[p.layer];
        l.name = name.into();
        l.outputs = vec![(ty.clone(), name.into())];
        p
    }

    /// A constant: its bytes go to the weights blob (64-byte aligned).
    pub fn constant(&mut self, t: &Tensor) -> Port {
        while !self.bin.len().is_multiple_of(64) {
            self.bin.push(0);
        }
        let bytes = t.data.to_le_bytes();
        let offset = self.bin.len();
        self.bin.extend_from_slice(&bytes);
        let ty = t.ty();
        let data = vec![
            ("element_type".into(), elem(ty.dtype).into()),
            ("shape".into(), shape_attr(&ty.shape)),
            ("offset".into(), offset.to_string()),
            ("size".into(), bytes.len().to_string()),
        ];
        self.layer("Const", "opset1", data, vec![], ty)
    }

    pub fn const_i64(&mut self, v: &[i64]) -> Port {
        self.constant(&Tensor::i64(vec![v.len()], v.to_vec()))
    }

    pub fn scalar_f32(&mut self, x: f32) -> Port {
        self.constant(&Tensor::scalar_f32(x))
    }

    /// A graph output named `name`.
    pub fn result(&mut self, name: &str, p: Port) {
        let l = &mut self.layers[p.layer];
        let first = l.inputs.len();
        if let Some((_, names)) = l.outputs.get_mut(p.port - first) {
            if names.is_empty() {
                *names = name.into();
            } else {
                names.push(',');
                names.push_str(name);
            }
        }
        let id = self.layers.len();
        self.layers.push(Layer {
            name: format!("{name}/sink_port_0"),
            kind: "Result".into(),
            version: "opset1".into(),
            data: vec![],
            inputs: vec![p],
            outputs: vec![],
        });
        let _ = id;
    }

    pub fn finish(self) -> crate::OpenVinoIr {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "<?xml version=\"1.0\"?>");
        let _ = writeln!(s, "<net name=\"{}\" version=\"11\">", esc(&self.name));
        let _ = writeln!(s, "\t<layers>");
        let dims = |s: &mut String, ty: &TensorType| {
            for d in &ty.shape {
                let _ = writeln!(s, "\t\t\t\t\t<dim>{d}</dim>");
            }
        };
        for (id, l) in self.layers.iter().enumerate() {
            let _ = writeln!(
                s,
                "\t\t<layer id=\"{id}\" name=\"{}\" type=\"{}\" version=\"{}\">",
                esc(&l.name),
                l.kind,
                l.version
            );
            if !l.data.is_empty() {
                let attrs: Vec<String> = l
                    .data
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", esc(v)))
                    .collect();
                let _ = writeln!(s, "\t\t\t<data {} />", attrs.join(" "));
            }
            if !l.inputs.is_empty() {
                let _ = writeln!(s, "\t\t\t<input>");
                for (i, p) in l.inputs.iter().enumerate() {
                    let _ = writeln!(
                        s,
                        "\t\t\t\t<port id=\"{i}\" precision=\"{}\">",
                        precision(p.ty.dtype)
                    );
                    dims(&mut s, &p.ty);
                    let _ = writeln!(s, "\t\t\t\t</port>");
                }
                let _ = writeln!(s, "\t\t\t</input>");
            }
            if !l.outputs.is_empty() {
                let _ = writeln!(s, "\t\t\t<output>");
            }
            for (k, (ty, names)) in l.outputs.iter().enumerate() {
                let names = if names.is_empty() {
                    String::new()
                } else {
                    format!(" names=\"{}\"", esc(names))
                };
                let _ = writeln!(
                    s,
                    "\t\t\t\t<port id=\"{}\" precision=\"{}\"{names}>",
                    l.inputs.len() + k,
                    precision(ty.dtype)
                );
                dims(&mut s, ty);
                let _ = writeln!(s, "\t\t\t\t</port>");
            }
            if !l.outputs.is_empty() {
                let _ = writeln!(s, "\t\t\t</output>");
            }
            let _ = writeln!(s, "\t\t</layer>");
        }
        let _ = writeln!(s, "\t</layers>");
        let _ = writeln!(s, "\t<edges>");
        for (id, l) in self.layers.iter().enumerate() {
            for (i, p) in l.inputs.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "\t\t<edge from-layer=\"{}\" from-port=\"{}\" to-layer=\"{id}\" to-port=\"{i}\" />",
                    p.layer, p.port
                );
            }
        }
        let _ = writeln!(s, "\t</edges>");
        let _ = writeln!(s, "</net>");
        crate::OpenVinoIr {
            xml: s,
            bin: self.bin,
        }
    }
}
