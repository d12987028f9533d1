//! The weights side file: a module's constants in the safetensors layout, so that a printed
//! module (whose large constants are `@name` handles) plus this file is the whole model, and
//! other tools can read the weights too.
//!
//! Layout: an 8-byte little-endian header length `N`, `N` bytes of JSON
//! `{"<name>": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, …,
//! "__metadata__": {"format": "vitc"}}` (padded with spaces so the data starts 8-byte
//! aligned), then every tensor's little-endian bytes, back to back in name order. The reader
//! treats its input as untrusted: it checks every length, offset and shape before it allocates
//! or slices, and reports problems as [`IrError::SideFile`], never by panicking. This module
//! converts bytes only; reading and writing files is the caller's job.

use crate::error::IrError;
use crate::module::Constants;
use crate::types::{checked_numel, DType, Data, Tensor};
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// The header key safetensors reserves for string metadata.
const METADATA: &str = "__metadata__";
/// Metadata key naming the entry that holds a constant which is itself called `__metadata__`
/// (it cannot be stored under its own name).
const RENAMED_METADATA: &str = "vitc.metadata_tensor";

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::I8 => "I8",
        DType::U8 => "U8",
        DType::I32 => "I32",
        DType::I64 => "I64",
        DType::Bool => "BOOL",
    }
}

fn side(msg: impl Into<String>) -> IrError {
    IrError::SideFile(msg.into())
}

/// Serialise constants (safetensors layout).
pub fn write_weights(c: &Constants) -> Vec<u8> {
    let mut header = Map::new();
    let mut metadata = Map::new();
    metadata.insert("format".into(), Value::String("vitc".into()));
    let mut data: Vec<u8> = Vec::new();
    for (name, t) in c {
        let key = if name == METADATA {
            let key = (0..)
                .map(|i| format!("{METADATA}.{i}"))
                .find(|k| !c.contains_key(k))
                .unwrap_or_default();
            metadata.insert(RENAMED_METADATA.into(), Value::String(key.clone()));
            key
        } else {
            name.clone()
        };
        let begin = data.len();
        data.extend_from_slice(&t.data.to_le_bytes());
        header.insert(
            key,
            json!({
                "dtype": dtype_name(t.dtype()),
                "shape": t.shape,
                "data_offsets": [begin, data.len()],
            }),
        );
    }
    header.insert(METADATA.into(), Value::Object(metadata));
    let mut text = Value::Object(header).to_string().into_bytes();
    // Pad with spaces (still valid JSON) so the data starts 8-byte aligned, as safetensors
    // writers do, for readers that map the file instead of copying it.
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + text.len() + data.len());
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    out.extend_from_slice(&data);
    out
}

/// Read constants written by [`write_weights`].
pub fn read_weights(bytes: &[u8]) -> Result<Constants, IrError> {
    let len_bytes: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| side("file is shorter than the 8-byte header length"))?;
    let n = u64::from_le_bytes(len_bytes);
    let rest = &bytes[8..];
    let n = usize::try_from(n)
        .ok()
        .filter(|&n| n <= rest.len())
        .ok_or_else(|| {
            side(format!(
                "header length {n} runs past the end of the file ({} bytes after it)",
                rest.len()
            ))
        })?;
    let (head, data) = rest.split_at(n);
    let header: Value =
        serde_json::from_slice(head).map_err(|e| side(format!("header is not valid JSON: {e}")))?;
    let Value::Object(header) = header else {
        return Err(side("header is not a JSON object"));
    };

    let mut renamed: Option<String> = None;
    if let Some(meta) = header.get(METADATA) {
        let Value::Object(meta) = meta else {
            return Err(side("__metadata__ is not an object"));
        };
        for (k, v) in meta {
            let Value::String(s) = v else {
                return Err(side(format!("metadata value `{k}` is not a string")));
            };
            if k == RENAMED_METADATA {
                renamed = Some(s.clone());
            }
        }
    }

    let mut out = Constants::new();
    let mut ranges: Vec<(usize, usize, &str)> = Vec::new();
    for (key, entry) in &header {
        if key == METADATA {
            continue;
        }
        let e = |msg: String| side(format!("tensor `{key}`: {msg}"));
        let Value::Object(fields) = entry else {
            return Err(e("entry is not an object".into()));
        };
        if let Some(k) = fields
            .keys()
            .find(|k| !matches!(k.as_str(), "dtype" | "shape" | "data_offsets"))
        {
            return Err(e(format!("unknown field `{k}`")));
        }
        let dtype = match fields.get("dtype") {
            Some(Value::String(s)) => DType::ALL
                .into_iter()
                .find(|&d| dtype_name(d) == s)
                .ok_or_else(|| e(format!("unsupported dtype {s:?}")))?,
            _ => return Err(e("missing or non-string `dtype`".into())),
        };
        let shape: Vec<usize> = match fields.get("shape") {
            Some(Value::Array(dims)) => dims
                .iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect::<Option<_>>()
                .ok_or_else(|| e("`shape` has an entry that is not a size".into()))?,
            _ => return Err(e("missing or non-array `shape`".into())),
        };
        let (begin, end) = match fields.get("data_offsets") {
            Some(Value::Array(o)) if o.len() == 2 => {
                let get = |v: &Value| v.as_u64().and_then(|x| usize::try_from(x).ok());
                match (get(&o[0]), get(&o[1])) {
                    (Some(b), Some(e)) => (b, e),
                    _ => return Err(e("`data_offsets` entries are not offsets".into())),
                }
            }
            _ => return Err(e("missing `data_offsets` [begin, end]".into())),
        };
        let numel = checked_numel(&shape)
            .ok_or_else(|| e(format!("shape {shape:?} has too many elements")))?;
        if begin > end || end > data.len() {
            return Err(e(format!(
                "data_offsets [{begin}, {end}] lie outside the {} data bytes",
                data.len()
            )));
        }
        // numel <= 2^40 and the width is at most 8, so this cannot overflow.
        let want = numel * dtype.size_bytes();
        if end - begin != want {
            return Err(e(format!(
                "{} bytes of data, but {} × {shape:?} needs {want}",
                end - begin,
                dtype_name(dtype)
            )));
        }
        let data = Data::from_le_bytes(dtype, &data[begin..end])
            .filter(|d| d.len() == numel)
            .ok_or_else(|| e("data does not fit the dtype".into()))?;
        ranges.push((begin, end, key));
        let name = if renamed.as_deref() == Some(key.as_str()) {
            METADATA.to_string()
        } else {
            key.clone()
        };
        out.insert(name, Arc::new(Tensor { shape, data }));
    }

    // Like safetensors itself: the tensors must tile the data exactly, so a damaged header
    // cannot silently alias two tensors or leave bytes unaccounted for.
    ranges.sort();
    let mut at = 0usize;
    for (begin, end, key) in &ranges {
        if *begin != at {
            return Err(side(format!(
                "tensor `{key}` starts at byte {begin}, expected {at} (overlap or gap)"
            )));
        }
        at = *end;
    }
    if at != data.len() {
        return Err(side(format!(
            "{} trailing data bytes belong to no tensor",
            data.len() - at
        )));
    }
    if let Some(r) = &renamed {
        if !out.contains_key(METADATA) {
            return Err(side(format!(
                "metadata names tensor `{r}`, which is missing"
            )));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    fn sample() -> Constants {
        let mut c = Constants::new();
        let mut add = |name: &str, shape: Vec<usize>, data: Data| {
            c.insert(name.into(), Arc::new(Tensor::new(shape, data)));
        };
        add(
            "f32",
            vec![2, 2],
            Data::F32(vec![1.5, -0.0, f32::NAN, f32::INFINITY]),
        );
        add(
            "f16",
            vec![3],
            Data::F16(vec![f16::from_f32(0.1), f16::MAX, f16::NEG_INFINITY]),
        );
        add(
            "bf16",
            vec![1, 2],
            Data::BF16(vec![bf16::from_f32(-3.5), bf16::MIN_POSITIVE]),
        );
        add("i8", vec![2], Data::I8(vec![-128, 127]));
        add("u8", vec![2], Data::U8(vec![0, 255]));
        add("i32", vec![], Data::I32(vec![i32::MIN]));
        add("i64", vec![2], Data::I64(vec![i64::MAX, -1]));
        add("bool", vec![3], Data::Bool(vec![true, false, true]));
        add("empty", vec![0, 4], Data::F32(vec![]));
        add("blocks.0 \"odd\" ü", vec![1], Data::F32(vec![2.0]));
        add(METADATA, vec![1], Data::U8(vec![7]));
        c
    }

    fn bits_equal(a: &Constants, b: &Constants) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|((ka, ta), (kb, tb))| {
                ka == kb
                    && ta.shape == tb.shape
                    && ta.dtype() == tb.dtype()
                    && ta.data.to_le_bytes() == tb.data.to_le_bytes()
            })
    }

    #[test]
    fn round_trip_every_dtype() {
        let c = sample();
        let bytes = write_weights(&c);
        assert_eq!(
            bytes.len() % 8,
            (c.values().map(|t| t.ty().size_bytes()).sum::<usize>()) % 8
        );
        let back = read_weights(&bytes).expect("reads back");
        assert!(bits_equal(&c, &back));
        let dtypes: std::collections::BTreeSet<DType> = back.values().map(|t| t.dtype()).collect();
        assert_eq!(dtypes.len(), DType::ALL.len());
        assert!(read_weights(&write_weights(&Constants::new()))
            .expect("empty file")
            .is_empty());
    }

    fn with_header(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn corrupted_headers_are_rejected() {
        let ok = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        assert!(read_weights(&with_header(ok, &[0; 8])).is_ok());
        let bad: &[(&str, usize)] = &[
            ("", 8),
            ("not json", 8),
            ("[1, 2]", 8),
            (
                r#"{"a":{"dtype":"F64","shape":[2],"data_offsets":[0,8]}}"#,
                8,
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
                8,
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#,
                8,
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}}"#,
                8,
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#,
                8,
            ),
            (r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}}"#, 8),
            (r#"{"a":{"dtype":"F32","shape":[2]}}"#, 8),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}}"#,
                8,
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
                12,
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#,
                8,
            ),
            (
                r#"{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}}"#,
                8,
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"format":1}}"#,
                8,
            ),
            (r#"{"a":3}"#, 8),
        ];
        for (h, n) in bad {
            let r = read_weights(&with_header(h, &vec![0; *n]));
            assert!(
                matches!(r, Err(IrError::SideFile(_))),
                "accepted {h} with {n} bytes"
            );
        }
        // Header length past the end, and absurdly large.
        let mut b = with_header(ok, &[0; 8]);
        b[..8].copy_from_slice(&1000u64.to_le_bytes());
        assert!(read_weights(&b).is_err());
        b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(read_weights(&b).is_err());
        assert!(read_weights(&[1, 2, 3]).is_err());
    }

    #[test]
    fn damaged_files_never_panic() {
        let bytes = write_weights(&sample());
        for cut in 0..bytes.len() {
            assert!(
                read_weights(&bytes[..cut]).is_err(),
                "prefix {cut} accepted"
            );
        }
        // Flip bytes one at a time: reading may succeed (a changed data byte) but never panics.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..2000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut b = bytes.clone();
            let i = (state % b.len() as u64) as usize;
            b[i] = (state >> 32) as u8;
            let _ = read_weights(&b);
        }
    }
}
