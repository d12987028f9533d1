//! Reading the ONNX file: the protobuf decode, tensor payloads (raw little-endian bytes, the
//! typed `*_data` fields, or external data beside the model) and declared value types.
//!
//! Everything here treats the file as hostile: element counts are checked for overflow before
//! anything is allocated, payload lengths are compared with the dims before decoding, and an
//! external-data `location` may only name a file inside the model's own folder. Nothing here
//! builds IR nodes.

use crate::error::OnnxError;
use half::{bf16, f16};
use onnx_protobuf::tensor_proto::{DataLocation, DataType};
use onnx_protobuf::tensor_shape_proto::dimension;
use onnx_protobuf::type_proto;
use onnx_protobuf::{ModelProto, TensorProto, ValueInfoProto};
use protobuf::Message;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path};
use vitc_ir::types::checked_numel;
use vitc_ir::{DType, Data, Tensor};

/// Decode a ModelProto. protobuf's own recursion limit bounds nesting depth.
pub(crate) fn parse_model(bytes: &[u8], name: &str) -> Result<ModelProto, OnnxError> {
    ModelProto::parse_from_bytes(bytes).map_err(|e| OnnxError::NotOnnx {
        model: name.to_string(),
        msg: e.to_string(),
    })
}

/// The IR element type for an ONNX `data_type` / `elem_type` code. DOUBLE maps to f32: the IR
/// has no f64, and exporters use it only for constants that fit f32.
pub(crate) fn dtype_of(code: i32) -> Result<DType, String> {
    Ok(match <DataType as protobuf::Enum>::from_i32(code) {
        Some(DataType::FLOAT) | Some(DataType::DOUBLE) => DType::F32,
        Some(DataType::FLOAT16) => DType::F16,
        Some(DataType::BFLOAT16) => DType::BF16,
        Some(DataType::INT8) => DType::I8,
        Some(DataType::UINT8) => DType::U8,
        Some(DataType::INT32) => DType::I32,
        Some(DataType::INT64) => DType::I64,
        Some(DataType::BOOL) => DType::Bool,
        Some(other) => return Err(format!("element type {other:?} is not supported")),
        None => return Err(format!("unknown element type code {code}")),
    })
}

/// Dims of a tensor proto as usize, with the element count checked.
pub(crate) fn tensor_dims(t: &TensorProto, what: &str) -> Result<(Vec<usize>, usize), OnnxError> {
    let mut dims = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        let d = usize::try_from(d).map_err(|_| OnnxError::Tensor {
            tensor: what.to_string(),
            msg: format!("negative dimension in dims {:?}", t.dims),
        })?;
        dims.push(d);
    }
    let n = checked_numel(&dims).ok_or_else(|| OnnxError::ShapeOverflow {
        what: format!("tensor '{what}'"),
        shape: t.dims.clone(),
    })?;
    Ok((dims, n))
}

/// Decode a tensor proto into an IR tensor. `model_dir` is where external data is looked up;
/// `None` refuses external data (the bytes came without a folder).
pub(crate) fn read_tensor(t: &TensorProto, model_dir: Option<&Path>) -> Result<Tensor, OnnxError> {
    let name = if t.name.is_empty() {
        "<unnamed>"
    } else {
        t.name.as_str()
    };
    let bad = |msg: String| OnnxError::Tensor {
        tensor: name.to_string(),
        msg,
    };
    let (dims, n) = tensor_dims(t, name)?;
    let code = t.data_type;
    let is_double = code == DataType::DOUBLE as i32;
    let dtype = dtype_of(code).map_err(&bad)?;
    if t.segment.is_some() {
        return Err(bad("segmented tensors are not supported".into()));
    }
    let external = match t.data_location.enum_value() {
        Ok(DataLocation::EXTERNAL) => true,
        Ok(DataLocation::DEFAULT) => false,
        Err(v) => return Err(bad(format!("unknown data_location {v}"))),
    };
    // Width of one element in the file (DOUBLE is stored as 8 bytes, then narrowed).
    let width = if is_double { 8 } else { dtype.size_bytes() };
    let want_bytes = n
        .checked_mul(width)
        .ok_or_else(|| OnnxError::ShapeOverflow {
            what: format!("tensor '{name}'"),
            shape: t.dims.clone(),
        })?;

    let raw: Option<Vec<u8>> = if external {
        Some(read_external(t, name, model_dir, want_bytes)?)
    } else if !t.raw_data.is_empty() {
        Some(t.raw_data.clone())
    } else {
        None
    };

    let data = if let Some(raw) = raw {
        if raw.len() != want_bytes {
            return Err(bad(format!(
                "dims {:?} need {want_bytes} bytes of data, the file holds {}",
                t.dims,
                raw.len()
            )));
        }
        if is_double {
            Data::F32(
                raw.chunks_exact(8)
                    .map(|c| {
                        let mut a = [0u8; 8];
                        a.copy_from_slice(c);
                        f64::from_le_bytes(a) as f32
                    })
                    .collect(),
            )
        } else {
            Data::from_le_bytes(dtype, &raw)
                .ok_or_else(|| bad("raw data does not fit the element type".into()))?
        }
    } else {
        typed_data(t, dtype, is_double, n).map_err(&bad)?
    };
    if data.len() != n {
        return Err(bad(format!(
            "dims {:?} need {n} elements, the file holds {}",
            t.dims,
            data.len()
        )));
    }
    Ok(Tensor::new(dims, data))
}

/// The typed `*_data` fields, per the ONNX spec's table of which field holds which type.
fn typed_data(t: &TensorProto, dtype: DType, is_double: bool, n: usize) -> Result<Data, String> {
    let count = |len: usize, field: &str| {
        if len == n {
            Ok(())
        } else {
            Err(format!(
                "dims {:?} need {n} elements, {field} holds {len}",
                t.dims
            ))
        }
    };
    Ok(match dtype {
        DType::F32 if is_double => {
            count(t.double_data.len(), "double_data")?;
            Data::F32(t.double_data.iter().map(|&x| x as f32).collect())
        }
        DType::F32 => {
            count(t.float_data.len(), "float_data")?;
            Data::F32(t.float_data.clone())
        }
        DType::I64 => {
            count(t.int64_data.len(), "int64_data")?;
            Data::I64(t.int64_data.clone())
        }
        _ => {
            count(t.int32_data.len(), "int32_data")?;
            let v = &t.int32_data;
            match dtype {
                // 16-bit floats travel as their bit patterns in int32_data.
                DType::F16 => Data::F16(v.iter().map(|&x| f16::from_bits(x as u16)).collect()),
                DType::BF16 => Data::BF16(v.iter().map(|&x| bf16::from_bits(x as u16)).collect()),
                DType::I8 => Data::I8(v.iter().map(|&x| x as i8).collect()),
                DType::U8 => Data::U8(v.iter().map(|&x| x as u8).collect()),
                DType::I32 => Data::I32(v.clone()),
                DType::Bool => Data::Bool(v.iter().map(|&x| x != 0).collect()),
                // F32 and I64 are handled above.
                DType::F32 | DType::I64 => return Err("internal: unreachable element type".into()),
            }
        }
    })
}

/// Read a tensor's external data: keys `location`, `offset`, `length` (ONNX external data
/// spec), relative to the model's folder and refused if they would leave it.
fn read_external(
    t: &TensorProto,
    name: &str,
    model_dir: Option<&Path>,
    want_bytes: usize,
) -> Result<Vec<u8>, OnnxError> {
    let ext = |msg: String| OnnxError::External {
        tensor: name.to_string(),
        msg,
    };
    let mut location = None;
    let mut offset: u64 = 0;
    let mut length: Option<u64> = None;
    for kv in &t.external_data {
        match kv.key.as_str() {
            "location" => location = Some(kv.value.as_str()),
            "offset" => {
                offset = kv
                    .value
                    .trim()
                    .parse()
                    .map_err(|_| ext(format!("offset '{}' is not a byte count", kv.value)))?
            }
            "length" => {
                length = Some(
                    kv.value
                        .trim()
                        .parse()
                        .map_err(|_| ext(format!("length '{}' is not a byte count", kv.value)))?,
                )
            }
            // checksum and unknown keys carry nothing the importer needs.
            _ => {}
        }
    }
    let location = location.ok_or_else(|| ext("no 'location' key".into()))?;
    let dir = model_dir.ok_or_else(|| {
        ext(format!(
            "the model was given as bytes without its folder, so '{location}' cannot be found"
        ))
    })?;
    let rel = Path::new(location);
    let outside = || OnnxError::ExternalOutside {
        tensor: name.to_string(),
        location: location.to_string(),
    };
    if location.is_empty()
        || rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(outside());
    }
    let path = dir.join(rel);
    let missing = |e: std::io::Error| OnnxError::ExternalMissing {
        tensor: name.to_string(),
        path: path.clone(),
        msg: e.to_string(),
    };
    // A symlink inside the folder may still point elsewhere: compare canonical paths.
    let canon_file = path.canonicalize().map_err(missing)?;
    let canon_dir = dir.canonicalize().map_err(|e| OnnxError::ExternalMissing {
        tensor: name.to_string(),
        path: dir.to_path_buf(),
        msg: e.to_string(),
    })?;
    if !canon_file.starts_with(&canon_dir) {
        return Err(outside());
    }
    let mut f = File::open(&canon_file).map_err(missing)?;
    let size = f.metadata().map_err(missing)?.len();
    let len = length.unwrap_or_else(|| size.saturating_sub(offset));
    let end = offset.saturating_add(len);
    if end > size {
        return Err(OnnxError::ExternalRange {
            tensor: name.to_string(),
            path,
            offset,
            end,
            size,
        });
    }
    // The length is bounded by the file size now, so this allocation is honest; still compare
    // with what the dims need first, so a wrong length gets the clearer message.
    if len != want_bytes as u64 {
        return Err(OnnxError::Tensor {
            tensor: name.to_string(),
            msg: format!(
                "dims {:?} need {want_bytes} bytes of data, external data holds {len}",
                t.dims
            ),
        });
    }
    let mut buf = vec![0u8; want_bytes];
    f.seek(SeekFrom::Start(offset)).map_err(missing)?;
    f.read_exact(&mut buf).map_err(missing)?;
    Ok(buf)
}

/// One declared dimension of a graph value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Dim {
    Static(usize),
    /// Symbolic (`dim_param`) or unknown; the string says which, for messages.
    Dynamic(String),
}

/// A graph value's declared element type code and shape (`None` if the shape is absent).
pub(crate) struct Declared {
    pub elem_type: i32,
    pub shape: Option<Vec<Dim>>,
}

/// Read a ValueInfoProto's tensor type; `Err` names what is wrong (non-tensor type, no type).
pub(crate) fn declared(v: &ValueInfoProto) -> Result<Declared, String> {
    let tp = v.type_.as_ref().ok_or("it declares no type")?;
    let tt = match &tp.value {
        Some(type_proto::Value::TensorType(tt)) => tt,
        Some(_) => {
            return Err(
                "it is not a tensor (sequences, maps and optionals are not supported)".into(),
            )
        }
        None => return Err("it declares no type".into()),
    };
    let shape = tt.shape.as_ref().map(|s| {
        s.dim
            .iter()
            .map(|d| match &d.value {
                Some(dimension::Value::DimValue(v)) if *v >= 0 => match usize::try_from(*v) {
                    Ok(u) => Dim::Static(u),
                    Err(_) => Dim::Dynamic(format!("{v}")),
                },
                Some(dimension::Value::DimParam(p)) => Dim::Dynamic(format!("'{p}'")),
                Some(dimension::Value::DimValue(v)) => Dim::Dynamic(format!("{v}")),
                _ => Dim::Dynamic("unknown".into()),
            })
            .collect()
    });
    Ok(Declared {
        elem_type: tt.elem_type,
        shape,
    })
}
