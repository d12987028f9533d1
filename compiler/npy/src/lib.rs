//! `.npy` arrays ↔ vit IR tensors, for the CLI (model inputs and outputs) and the tests
//! (reference data). Works on bytes; the caller does the file I/O. Float arrays of any width
//! become f32 tensors, integer arrays become i64 (or their own type where the IR has it).

use npyz::{DType as NpyDType, NpyFile, TypeChar, WriterBuilder};
use thiserror::Error;
use vitc_ir::{types::checked_numel, Data, Tensor};

#[derive(Debug, Error)]
pub enum NpyError {
    #[error("not a readable .npy array: {0}")]
    Format(String),
    #[error("unsupported .npy element type {0} (expected a float, int, uint or bool array)")]
    DType(String),
    #[error("array shape {0:?} is too large")]
    Shape(Vec<u64>),
}

/// Read an `.npy` file's bytes into a tensor.
pub fn read(bytes: &[u8]) -> Result<Tensor, NpyError> {
    let npy = NpyFile::new(bytes).map_err(|e| NpyError::Format(e.to_string()))?;
    let shape64 = npy.shape().to_vec();
    let shape: Vec<usize> = shape64
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| NpyError::Shape(shape64.clone()))?;
    let n = checked_numel(&shape).ok_or_else(|| NpyError::Shape(shape64.clone()))?;
    if npy.order() != npyz::Order::C {
        return Err(NpyError::Format(
            "Fortran-order arrays are not supported".into(),
        ));
    }
    let ts = match npy.dtype() {
        NpyDType::Plain(ts) => ts,
        other => return Err(NpyError::DType(format!("{other:?}"))),
    };
    let fmt = |e: std::io::Error| NpyError::Format(e.to_string());
    let size = ts.size_field();
    let data = match (ts.type_char(), size) {
        (TypeChar::Float, 4) => Data::F32(npy.into_vec::<f32>().map_err(fmt)?),
        (TypeChar::Float, 8) => Data::F32(
            npy.into_vec::<f64>()
                .map_err(fmt)?
                .into_iter()
                .map(|x| x as f32)
                .collect(),
        ),
        (TypeChar::Int, 1) => Data::I8(npy.into_vec::<i8>().map_err(fmt)?),
        (TypeChar::Uint, 1) => Data::U8(npy.into_vec::<u8>().map_err(fmt)?),
        (TypeChar::Int, 4) => Data::I32(npy.into_vec::<i32>().map_err(fmt)?),
        (TypeChar::Int, 8) => Data::I64(npy.into_vec::<i64>().map_err(fmt)?),
        (TypeChar::Bool, 1) => Data::Bool(npy.into_vec::<bool>().map_err(fmt)?),
        _ => return Err(NpyError::DType(ts.to_string())),
    };
    if data.len() != n {
        return Err(NpyError::Format(format!(
            "header says {n} elements, file holds {}",
            data.len()
        )));
    }
    Ok(Tensor::new(shape, data))
}

/// Write a tensor as `.npy` bytes (f32 as `<f4`, i64 as `<i8`, others converted to f32).
pub fn write(t: &Tensor) -> Vec<u8> {
    let shape: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
    let mut out = Vec::new();
    let res = match &t.data {
        Data::I64(v) => write_vec(&mut out, &shape, v),
        Data::F32(v) => write_vec(&mut out, &shape, v),
        _ => write_vec(&mut out, &shape, &t.to_f32_vec()),
    };
    res.expect("writing to a Vec cannot fail");
    out
}

fn write_vec<T: npyz::AutoSerialize + Copy>(
    out: &mut Vec<u8>,
    shape: &[u64],
    v: &[T],
) -> std::io::Result<()> {
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(shape)
        .writer(std::io::Cursor::new(out))
        .begin_nd()?;
    w.extend(v.iter().copied())?;
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_f32_and_i64() {
        let t = Tensor::f32(vec![2, 3], vec![1.0, -2.5, 3.0, 0.0, 1e-8, f32::MAX]);
        assert_eq!(read(&write(&t)).unwrap(), t);
        let t = Tensor::i64(vec![4], vec![1, -2, i64::MAX, 0]);
        assert_eq!(read(&write(&t)).unwrap(), t);
        let t = Tensor::f32(vec![], vec![7.0]);
        assert_eq!(read(&write(&t)).unwrap(), t);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(read(b"not an npy file").is_err());
        let good = write(&Tensor::f32(vec![8], vec![0.5; 8]));
        for cut in 0..good.len() {
            assert!(
                read(&good[..cut]).is_err(),
                "prefix of {cut} bytes accepted"
            );
        }
    }
}
