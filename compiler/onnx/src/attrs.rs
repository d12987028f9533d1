//! Typed access to a node's attributes, with the ONNX-spec default supplied by the caller.
//!
//! Every accessor checks the attribute's declared type, so a file that stores an INTS where a
//! FLOAT belongs gets a message instead of a silently wrong value. Errors are plain strings
//! here; the node context wraps them with the node's name and op. This deliberately avoids
//! `AttributeProto::as_value()` from onnx-protobuf, which panics on unknown attribute types.

use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::{AttributeProto, TensorProto};

pub(crate) struct Attrs<'a> {
    list: &'a [AttributeProto],
}

type R<T> = Result<T, String>;

impl<'a> Attrs<'a> {
    pub fn new(list: &'a [AttributeProto]) -> Self {
        Attrs { list }
    }

    fn get(&self, name: &str) -> Option<&'a AttributeProto> {
        self.list.iter().find(|a| a.name == name)
    }

    /// The attribute if present, after checking its declared type. Old writers left `type`
    /// unset (UNDEFINED); those are accepted and read from the field the caller expects.
    fn typed(&self, name: &str, want: AttributeType) -> R<Option<&'a AttributeProto>> {
        let Some(a) = self.get(name) else {
            return Ok(None);
        };
        match a.type_.enum_value() {
            Ok(t) if t == want || t == AttributeType::UNDEFINED => Ok(Some(a)),
            Ok(t) => Err(format!(
                "attribute '{name}' must be {want:?}, but the file stores {t:?}"
            )),
            Err(v) => Err(format!("attribute '{name}' has unknown type {v}")),
        }
    }

    pub fn opt_int(&self, name: &str) -> R<Option<i64>> {
        Ok(self.typed(name, AttributeType::INT)?.map(|a| a.i))
    }

    pub fn int(&self, name: &str, default: i64) -> R<i64> {
        Ok(self.opt_int(name)?.unwrap_or(default))
    }

    pub fn opt_float(&self, name: &str) -> R<Option<f32>> {
        Ok(self.typed(name, AttributeType::FLOAT)?.map(|a| a.f))
    }

    pub fn float(&self, name: &str, default: f32) -> R<f32> {
        Ok(self.opt_float(name)?.unwrap_or(default))
    }

    pub fn ints(&self, name: &str) -> R<Option<&'a [i64]>> {
        Ok(self
            .typed(name, AttributeType::INTS)?
            .map(|a| a.ints.as_slice()))
    }

    pub fn floats(&self, name: &str) -> R<Option<&'a [f32]>> {
        Ok(self
            .typed(name, AttributeType::FLOATS)?
            .map(|a| a.floats.as_slice()))
    }

    pub fn string(&self, name: &str, default: &str) -> R<String> {
        Ok(match self.typed(name, AttributeType::STRING)? {
            Some(a) => String::from_utf8_lossy(&a.s).into_owned(),
            None => default.to_string(),
        })
    }

    pub fn tensor(&self, name: &str) -> R<Option<&'a TensorProto>> {
        Ok(match self.typed(name, AttributeType::TENSOR)? {
            Some(a) => Some(
                a.t.as_ref()
                    .ok_or_else(|| format!("attribute '{name}' holds no tensor"))?,
            ),
            None => None,
        })
    }
}
