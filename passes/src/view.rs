//! Strided views: what a chain of reshapes and transposes does to a tensor's elements, as
//! shape and strides over the tensor it started from. The attention rules use them to decide
//! whether an operand is a head split (or the result a head merge) of another tensor, whatever
//! chain of reshapes and transposes an exporter spelled it with, by comparing where each
//! (batch, head, position, channel) element lives. Nothing here looks at an e-graph.

use vitc_ir::{AttnLayout, Op};

/// A tensor as a strided view of a contiguous base tensor (offset 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    pub shape: Vec<usize>,
    pub strides: Vec<isize>,
}

impl View {
    /// The base tensor itself.
    pub fn contiguous(shape: &[usize]) -> View {
        let strides = vitc_ir::types::strides(shape)
            .into_iter()
            .map(|s| s as isize)
            .collect();
        View {
            shape: shape.to_vec(),
            strides,
        }
    }

    pub fn transpose(&self, perm: &[usize]) -> Option<View> {
        if perm.len() != self.shape.len() {
            return None;
        }
        Some(View {
            shape: perm.iter().map(|&p| self.shape[p]).collect(),
            strides: perm.iter().map(|&p| self.strides[p]).collect(),
        })
    }

    /// The view with a new shape and the same elements in row-major order, if strides can say
    /// it (numpy's no-copy reshape): each group of old dims that multiplies to a group of new
    /// dims must be contiguous within itself.
    pub fn reshape(&self, new: &[usize]) -> Option<View> {
        if self.shape.iter().product::<usize>() != new.iter().product::<usize>() {
            return None;
        }
        let old: Vec<(usize, isize)> = self
            .shape
            .iter()
            .zip(&self.strides)
            .filter(|(&n, _)| n != 1)
            .map(|(&n, &s)| (n, s))
            .collect();
        let big: Vec<usize> = (0..new.len()).filter(|&i| new[i] != 1).collect();
        let mut ns = vec![0isize; new.len()];
        let (mut i, mut j) = (0, 0);
        while i < old.len() && j < big.len() {
            let (i0, j0) = (i, j);
            let (mut po, mut pn) = (old[i].0, new[big[j]]);
            i += 1;
            j += 1;
            while po != pn {
                if po < pn {
                    po *= old.get(i)?.0;
                    i += 1;
                } else {
                    pn *= new[*big.get(j)?];
                    j += 1;
                }
            }
            for k in i0..i - 1 {
                if old[k].1 != old[k + 1].1 * old[k + 1].0 as isize {
                    return None;
                }
            }
            ns[big[j - 1]] = old[i - 1].1;
            for k in (j0..j - 1).rev() {
                ns[big[k]] = ns[big[k + 1]] * new[big[k + 1]] as isize;
            }
        }
        if i != old.len() || j != big.len() {
            return None;
        }
        Some(View {
            shape: new.to_vec(),
            strides: ns,
        })
    }

    /// Apply a reshape or transpose; `None` for other ops or views strides cannot express.
    pub fn apply(&self, op: &Op) -> Option<View> {
        match op {
            Op::Reshape { shape } => self.reshape(shape),
            Op::Transpose { perm } => self.transpose(perm),
            _ => None,
        }
    }
}

/// Sizes of batch, heads, sequence and head dim, in that order.
pub type Dims = [usize; 4];

/// The shape a tensor has in `layout` (`bsd` merges heads into the last dim).
pub fn packed_shape(layout: AttnLayout, [b, h, s, d]: Dims) -> Vec<usize> {
    match layout {
        AttnLayout::Bsd => vec![b, s, h * d],
        AttnLayout::Bhsd => vec![b, h, s, d],
        AttnLayout::Bhds => vec![b, h, d, s],
        AttnLayout::Bshd => vec![b, s, h, d],
    }
}

/// The four-dim spelling of `layout` and, for each of its dims, which of (b, h, s, d) it is.
fn split(layout: AttnLayout, [b, h, s, d]: Dims) -> (Vec<usize>, [usize; 4]) {
    match layout {
        AttnLayout::Bsd | AttnLayout::Bshd => (vec![b, s, h, d], [0, 2, 1, 3]),
        AttnLayout::Bhsd => (vec![b, h, s, d], [0, 1, 2, 3]),
        AttnLayout::Bhds => (vec![b, h, d, s], [0, 1, 3, 2]),
    }
}

/// Where element (b, h, s, d) of a tensor laid out as `layout` lives in the view's base: its
/// stride along each of b, h, s, d. `None` if the view's shape is not `layout`'s.
pub fn label_strides(view: &View, layout: AttnLayout, dims: Dims) -> Option<[isize; 4]> {
    if view.shape != packed_shape(layout, dims) {
        return None;
    }
    let (shape, labels) = split(layout, dims);
    let v = view.reshape(&shape)?;
    let mut out = [0isize; 4];
    for (k, &l) in labels.iter().enumerate() {
        out[l] = v.strides[k];
    }
    Some(out)
}

/// Whether two element maps agree wherever the size is above one (strides along a size-one
/// dim are never used).
pub fn same_map(a: [isize; 4], b: [isize; 4], dims: Dims) -> bool {
    (0..4).all(|i| dims[i] <= 1 || a[i] == b[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_splits_and_merges_contiguous_dims() {
        let v = View::contiguous(&[2, 6]);
        assert_eq!(v.reshape(&[2, 2, 3]).unwrap().strides, vec![6, 3, 1]);
        let t = v.transpose(&[1, 0]).unwrap();
        // [6, 2] with strides [1, 6]: splitting the 6 works, merging both does not.
        assert_eq!(t.reshape(&[2, 3, 2]).unwrap().strides, vec![3, 1, 6]);
        assert!(t.reshape(&[12]).is_none());
        assert_eq!(v.reshape(&[1, 2, 1, 6, 1]).unwrap().strides[1], 6);
    }

    #[test]
    fn head_split_matches_bhsd_of_bsd() {
        // x: [1, 5, 2·3] (bsd, 2 heads of 3); q = transpose(reshape(x, [1,5,2,3]), [0,2,1,3]).
        let dims = [1, 2, 5, 3];
        let q = View::contiguous(&[1, 5, 6])
            .reshape(&[1, 5, 2, 3])
            .unwrap()
            .transpose(&[0, 2, 1, 3])
            .unwrap();
        let as_bhsd = label_strides(&q, AttnLayout::Bhsd, dims).unwrap();
        let base = label_strides(&View::contiguous(&[1, 5, 6]), AttnLayout::Bsd, dims).unwrap();
        assert!(same_map(as_bhsd, base, dims));
        let wrong = label_strides(&View::contiguous(&[1, 5, 6]), AttnLayout::Bsd, [1, 3, 5, 2]);
        assert!(wrong.is_none_or(|w| !same_map(as_bhsd, w, dims)));
    }
}
