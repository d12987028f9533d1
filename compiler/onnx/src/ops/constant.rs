//! The Constant op: its one value attribute (a tensor, or the value_float(s)/value_int(s)
//! shorthands) becomes a module constant. String and sparse values are refused.

use crate::ctx::{Ctx, Outs};
use crate::load::read_tensor;
use vitc_ir::{Data, Tensor};

pub fn constant(cx: &mut Ctx<'_>) -> Outs {
    let set: Vec<&str> = cx.node.attribute.iter().map(|a| a.name.as_str()).collect();
    if set.len() != 1 {
        return Err(cx.err(format!(
            "Constant needs exactly one value attribute, got {set:?}"
        )));
    }
    let t = match set[0] {
        "value" => {
            let tp = cx
                .attrs
                .tensor("value")
                .map_err(|m| cx.err(m))?
                .ok_or_else(|| cx.err("attribute 'value' is missing"))?;
            read_tensor(tp, cx.model_dir)?
        }
        "value_float" => Tensor::scalar_f32(cx.attr_float("value_float", 0.0)?),
        "value_int" => {
            let v = cx.attr_int("value_int", 0)?;
            Tensor::new(Vec::<usize>::new(), Data::I64(vec![v]))
        }
        "value_floats" => {
            let v = cx.attr_floats("value_floats")?.unwrap_or_default();
            Tensor::new(vec![v.len()], Data::F32(v))
        }
        "value_ints" => {
            let v = cx.attr_ints("value_ints")?.unwrap_or_default();
            Tensor::new(vec![v.len()], Data::I64(v))
        }
        other => {
            return Err(cx.err(format!(
                "Constant attribute '{other}' is not supported (string and sparse constants have no IR form)"
            )))
        }
    };
    Ok(vec![cx.constant(t)])
}
