//! Element types, tensor types and tensor values.
//!
//! Every IR value has a static shape and one element type; `Tensor` is a dense row-major value
//! of such a type (constants, interpreter values). Nothing here knows about ops or graphs.

use half::{bf16, f16};
use std::fmt;

/// Element type of a tensor. `Bool` exists for the comparison results an exporter leaves in
/// shape arithmetic; the frontend folds nearly all of them away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F32,
    F16,
    BF16,
    I8,
    U8,
    I32,
    I64,
    Bool,
}

impl DType {
    pub const ALL: [DType; 8] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::I8,
        DType::U8,
        DType::I32,
        DType::I64,
        DType::Bool,
    ];

    /// The MLIR spelling used by the text form.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I8 => "i8",
            DType::U8 => "ui8",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::Bool => "i1",
        }
    }

    pub fn from_name(s: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == s)
    }

    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
            DType::I64 => 8,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    pub fn is_int(self) -> bool {
        matches!(self, DType::I8 | DType::U8 | DType::I32 | DType::I64)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A static shape and an element type: `tensor<1x197x192xf32>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub shape: Vec<usize>,
    pub dtype: DType,
}

impl TensorType {
    pub fn new(shape: impl Into<Vec<usize>>, dtype: DType) -> Self {
        TensorType {
            shape: shape.into(),
            dtype,
        }
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements. Shapes are checked for overflow where they are made (frontend,
    /// parser), so this plain product cannot overflow on a verified module.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn size_bytes(&self) -> usize {
        self.numel() * self.dtype.size_bytes()
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tensor<")?;
        for d in &self.shape {
            write!(f, "{d}x")?;
        }
        write!(f, "{}>", self.dtype)
    }
}

/// Largest element count vitc accepts for one tensor (2^40 elements); larger shapes are a
/// malformed or hostile model, and rejecting them keeps every size computation in range.
pub const MAX_NUMEL: usize = 1 << 40;

/// Product of dims, or `None` if it overflows or passes [`MAX_NUMEL`].
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    let mut n: usize = 1;
    for &d in shape {
        n = n.checked_mul(d)?;
    }
    (n <= MAX_NUMEL).then_some(n)
}

/// Row-major strides (in elements) of a shape.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Dense element storage, one variant per [`DType`].
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    I8(Vec<i8>),
    U8(Vec<u8>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
}

impl Data {
    pub fn dtype(&self) -> DType {
        match self {
            Data::F32(_) => DType::F32,
            Data::F16(_) => DType::F16,
            Data::BF16(_) => DType::BF16,
            Data::I8(_) => DType::I8,
            Data::U8(_) => DType::U8,
            Data::I32(_) => DType::I32,
            Data::I64(_) => DType::I64,
            Data::Bool(_) => DType::Bool,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::F16(v) => v.len(),
            Data::BF16(v) => v.len(),
            Data::I8(v) => v.len(),
            Data::U8(v) => v.len(),
            Data::I32(v) => v.len(),
            Data::I64(v) => v.len(),
            Data::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All zeros of a type.
    pub fn zeros(dtype: DType, n: usize) -> Data {
        match dtype {
            DType::F32 => Data::F32(vec![0.0; n]),
            DType::F16 => Data::F16(vec![f16::ZERO; n]),
            DType::BF16 => Data::BF16(vec![bf16::ZERO; n]),
            DType::I8 => Data::I8(vec![0; n]),
            DType::U8 => Data::U8(vec![0; n]),
            DType::I32 => Data::I32(vec![0; n]),
            DType::I64 => Data::I64(vec![0; n]),
            DType::Bool => Data::Bool(vec![false; n]),
        }
    }

    /// Element `i` widened to f64 (exact for every type here).
    pub fn get_f64(&self, i: usize) -> f64 {
        match self {
            Data::F32(v) => v[i] as f64,
            Data::F16(v) => v[i].to_f64(),
            Data::BF16(v) => v[i].to_f64(),
            Data::I8(v) => v[i] as f64,
            Data::U8(v) => v[i] as f64,
            Data::I32(v) => v[i] as f64,
            Data::I64(v) => v[i] as f64,
            Data::Bool(v) => v[i] as u8 as f64,
        }
    }

    /// Element `i` as i64 (floats truncate toward zero, like a C cast).
    pub fn get_i64(&self, i: usize) -> i64 {
        match self {
            Data::F32(v) => v[i] as i64,
            Data::F16(v) => v[i].to_f32() as i64,
            Data::BF16(v) => v[i].to_f32() as i64,
            Data::I8(v) => v[i] as i64,
            Data::U8(v) => v[i] as i64,
            Data::I32(v) => v[i] as i64,
            Data::I64(v) => v[i],
            Data::Bool(v) => v[i] as i64,
        }
    }

    /// Build data of `dtype` from f64 values, rounding to the element type (float types round
    /// to nearest; integer types truncate and saturate, booleans test for non-zero).
    pub fn from_f64(dtype: DType, vals: impl Iterator<Item = f64>) -> Data {
        match dtype {
            DType::F32 => Data::F32(vals.map(|x| x as f32).collect()),
            DType::F16 => Data::F16(vals.map(f16::from_f64).collect()),
            DType::BF16 => Data::BF16(vals.map(bf16::from_f64).collect()),
            DType::I8 => Data::I8(vals.map(|x| x as i8).collect()),
            DType::U8 => Data::U8(vals.map(|x| x as u8).collect()),
            DType::I32 => Data::I32(vals.map(|x| x as i32).collect()),
            DType::I64 => Data::I64(vals.map(|x| x as i64).collect()),
            DType::Bool => Data::Bool(vals.map(|x| x != 0.0).collect()),
        }
    }

    /// Build data of `dtype` from i64 values (wrapping like a C cast for narrower ints).
    pub fn from_i64(dtype: DType, vals: impl Iterator<Item = i64>) -> Data {
        match dtype {
            DType::F32 => Data::F32(vals.map(|x| x as f32).collect()),
            DType::F16 => Data::F16(vals.map(|x| f16::from_f64(x as f64)).collect()),
            DType::BF16 => Data::BF16(vals.map(|x| bf16::from_f64(x as f64)).collect()),
            DType::I8 => Data::I8(vals.map(|x| x as i8).collect()),
            DType::U8 => Data::U8(vals.map(|x| x as u8).collect()),
            DType::I32 => Data::I32(vals.map(|x| x as i32).collect()),
            DType::I64 => Data::I64(vals.collect()),
            DType::Bool => Data::Bool(vals.map(|x| x != 0).collect()),
        }
    }

    /// Little-endian bytes of the elements (the side-file and ONNX raw_data layout).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            Data::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::F16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::BF16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::I8(v) => v.iter().map(|&x| x as u8).collect(),
            Data::U8(v) => v.clone(),
            Data::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::Bool(v) => v.iter().map(|&x| x as u8).collect(),
        }
    }

    /// Inverse of [`Data::to_le_bytes`]; `None` if the byte count does not fit the type.
    pub fn from_le_bytes(dtype: DType, b: &[u8]) -> Option<Data> {
        let w = dtype.size_bytes();
        if !b.len().is_multiple_of(w) {
            return None;
        }
        fn chunks<const N: usize>(b: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
            b.chunks_exact(N).map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                a
            })
        }
        Some(match dtype {
            DType::F32 => Data::F32(chunks::<4>(b).map(f32::from_le_bytes).collect()),
            DType::F16 => Data::F16(chunks::<2>(b).map(f16::from_le_bytes).collect()),
            DType::BF16 => Data::BF16(chunks::<2>(b).map(bf16::from_le_bytes).collect()),
            DType::I8 => Data::I8(b.iter().map(|&x| x as i8).collect()),
            DType::U8 => Data::U8(b.to_vec()),
            DType::I32 => Data::I32(chunks::<4>(b).map(i32::from_le_bytes).collect()),
            DType::I64 => Data::I64(chunks::<8>(b).map(i64::from_le_bytes).collect()),
            DType::Bool => Data::Bool(b.iter().map(|&x| x != 0).collect()),
        })
    }
}

/// A dense row-major tensor value.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Data,
}

impl Tensor {
    /// Panics if the element count disagrees with the shape: callers build both together.
    pub fn new(shape: impl Into<Vec<usize>>, data: Data) -> Tensor {
        let shape = shape.into();
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "tensor data length does not match its shape"
        );
        Tensor { shape, data }
    }

    pub fn f32(shape: impl Into<Vec<usize>>, v: Vec<f32>) -> Tensor {
        Tensor::new(shape, Data::F32(v))
    }

    pub fn i64(shape: impl Into<Vec<usize>>, v: Vec<i64>) -> Tensor {
        Tensor::new(shape, Data::I64(v))
    }

    pub fn scalar_f32(x: f32) -> Tensor {
        Tensor::f32(vec![], vec![x])
    }

    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    pub fn ty(&self) -> TensorType {
        TensorType::new(self.shape.clone(), self.dtype())
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// f32 view of the data, if it is f32.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            Data::F32(v) => Some(v),
            _ => None,
        }
    }

    /// Every element widened to f64.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        (0..self.numel()).map(|i| self.data.get_f64(i)).collect()
    }

    /// Every element as f32 (floats rounded, integers converted).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.data {
            Data::F32(v) => v.clone(),
            _ => (0..self.numel())
                .map(|i| self.data.get_f64(i) as f32)
                .collect(),
        }
    }

    /// Every element as i64 (floats truncated).
    pub fn to_i64_vec(&self) -> Vec<i64> {
        match &self.data {
            Data::I64(v) => v.clone(),
            _ => (0..self.numel()).map(|i| self.data.get_i64(i)).collect(),
        }
    }

    /// Convert to another element type with ONNX Cast semantics.
    pub fn cast(&self, to: DType) -> Tensor {
        if self.dtype() == to {
            return self.clone();
        }
        let data = if self.dtype().is_float() || to.is_float() || to == DType::Bool {
            if to.is_int() && self.dtype().is_float() {
                // Float to int truncates toward zero (and saturates, Rust `as` semantics).
                Data::from_i64(to, self.to_f64_vec().into_iter().map(|x| x as i64))
            } else {
                Data::from_f64(to, self.to_f64_vec().into_iter())
            }
        } else {
            Data::from_i64(to, self.to_i64_vec().into_iter())
        };
        Tensor {
            shape: self.shape.clone(),
            data,
        }
    }
}
