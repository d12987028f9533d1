//! Modules: the SSA graph of one model.
//!
//! A module is a list of nodes in topological order; node `i` defines value `%i`. Graph inputs
//! are `vit.input` nodes, weights are `vit.constant` nodes naming an entry of the constant
//! table. The builder infers every result type as nodes are added, so a module built through it
//! is well typed by construction; [`crate::verify::verify`] re-checks modules that came from elsewhere
//! (the parser, passes).

use crate::error::IrError;
use crate::infer::infer_type;
use crate::op::Op;
use crate::types::{Tensor, TensorType};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::{Dfs, Reversed};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// Index of a node, and so of the value it defines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub usize);

impl fmt::Display for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0)
    }
}

/// One op application and the value it defines.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub ty: TensorType,
    /// Where the node came from (the ONNX node name), for messages; may be empty.
    pub name: String,
}

/// Named constant tensors, shared cheaply between copies of a module.
pub type Constants = BTreeMap<String, Arc<Tensor>>;

/// A model: nodes in topological order, graph inputs and outputs by their ONNX names, and the
/// constants the `vit.constant` nodes name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Module {
    pub name: String,
    pub nodes: Vec<Node>,
    pub inputs: Vec<(String, ValueId)>,
    pub outputs: Vec<(String, ValueId)>,
    pub constants: Constants,
}

impl Module {
    pub fn new(name: impl Into<String>) -> Module {
        Module {
            name: name.into(),
            ..Default::default()
        }
    }

    pub fn node(&self, v: ValueId) -> &Node {
        &self.nodes[v.0]
    }

    pub fn ty(&self, v: ValueId) -> &TensorType {
        &self.nodes[v.0].ty
    }

    /// Append a graph input.
    pub fn add_input(&mut self, name: impl Into<String>, ty: TensorType) -> ValueId {
        let index = self.inputs.len();
        let name = name.into();
        let id = self.push(Node {
            op: Op::Input { index },
            inputs: vec![],
            ty,
            name: name.clone(),
        });
        self.inputs.push((name, id));
        id
    }

    /// Add a constant under a unique name derived from `name` and return its value.
    pub fn add_constant(&mut self, name: &str, t: Tensor) -> ValueId {
        let key = self.unique_constant_name(name);
        let ty = t.ty();
        self.constants.insert(key.clone(), Arc::new(t));
        self.push(Node {
            op: Op::Constant { name: key },
            inputs: vec![],
            ty,
            name: name.to_string(),
        })
    }

    fn unique_constant_name(&self, name: &str) -> String {
        let base = if name.is_empty() { "c" } else { name };
        if !self.constants.contains_key(base) {
            return base.to_string();
        }
        (1..)
            .map(|i| format!("{base}.{i}"))
            .find(|n| !self.constants.contains_key(n))
            .expect("an unused name exists")
    }

    /// Add a node, inferring its result type from its operands.
    pub fn add(
        &mut self,
        op: Op,
        inputs: Vec<ValueId>,
        name: impl Into<String>,
    ) -> Result<ValueId, IrError> {
        let name = name.into();
        for v in &inputs {
            if v.0 >= self.nodes.len() {
                return Err(IrError::Verify {
                    node: name,
                    op: op.name(),
                    msg: format!("operand {v} is not defined before use"),
                });
            }
        }
        let tys: Vec<&TensorType> = inputs.iter().map(|&v| self.ty(v)).collect();
        let ty = infer_type(&op, &tys).map_err(|msg| IrError::Verify {
            node: name.clone(),
            op: op.name(),
            msg,
        })?;
        Ok(self.push(Node {
            op,
            inputs,
            ty,
            name,
        }))
    }

    /// Append a node whose type the caller vouches for (parser; verified afterwards).
    pub fn push(&mut self, node: Node) -> ValueId {
        self.nodes.push(node);
        ValueId(self.nodes.len() - 1)
    }

    /// The constant tensor behind a `vit.constant` value, if `v` is one.
    pub fn constant(&self, v: ValueId) -> Option<&Arc<Tensor>> {
        match &self.node(v).op {
            Op::Constant { name } => self.constants.get(name),
            _ => None,
        }
    }

    /// The def-use graph: an edge from each operand to its user, weighted by operand position.
    pub fn graph(&self) -> DiGraph<ValueId, usize> {
        let mut g = DiGraph::with_capacity(self.nodes.len(), self.nodes.len() * 2);
        for i in 0..self.nodes.len() {
            g.add_node(ValueId(i));
        }
        for (i, n) in self.nodes.iter().enumerate() {
            for (pos, v) in n.inputs.iter().enumerate() {
                g.add_edge(NodeIndex::new(v.0), NodeIndex::new(i), pos);
            }
        }
        g
    }

    /// Number of uses of each value (outputs count as uses).
    pub fn use_counts(&self) -> Vec<usize> {
        let mut uses = vec![0; self.nodes.len()];
        for n in &self.nodes {
            for v in &n.inputs {
                uses[v.0] += 1;
            }
        }
        for (_, v) in &self.outputs {
            uses[v.0] += 1;
        }
        uses
    }

    /// Remove nodes no output depends on (graph inputs always stay), renumber the rest in
    /// order, and drop constants nothing names any more.
    pub fn dce(&mut self) {
        let g = self.graph();
        let mut live = vec![false; self.nodes.len()];
        let rev = Reversed(&g);
        for (_, out) in &self.outputs {
            let mut dfs = Dfs::new(rev, NodeIndex::new(out.0));
            while let Some(ix) = dfs.next(rev) {
                live[ix.index()] = true;
            }
        }
        for (_, inp) in &self.inputs {
            live[inp.0] = true;
        }
        let mut remap = vec![usize::MAX; self.nodes.len()];
        let mut kept = Vec::with_capacity(self.nodes.len());
        for (i, mut n) in std::mem::take(&mut self.nodes).into_iter().enumerate() {
            if live[i] {
                remap[i] = kept.len();
                for v in n.inputs.iter_mut() {
                    *v = ValueId(remap[v.0]);
                }
                kept.push(n);
            }
        }
        self.nodes = kept;
        for (_, v) in self.inputs.iter_mut().chain(self.outputs.iter_mut()) {
            *v = ValueId(remap[v.0]);
        }
        let used: std::collections::HashSet<&str> = self
            .nodes
            .iter()
            .filter_map(|n| match &n.op {
                Op::Constant { name } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        self.constants.retain(|k, _| used.contains(k.as_str()));
    }

    /// Total bytes of the constants.
    pub fn constant_bytes(&self) -> usize {
        self.constants.values().map(|t| t.ty().size_bytes()).sum()
    }

    /// Number of constant elements (parameters).
    pub fn constant_elements(&self) -> usize {
        self.constants.values().map(|t| t.numel()).sum()
    }

    /// Floating-point operations of one run.
    pub fn flops(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| {
                let ins: Vec<&[usize]> = n
                    .inputs
                    .iter()
                    .map(|&v| self.ty(v).shape.as_slice())
                    .collect();
                n.op.flops(&ins, &n.ty.shape)
            })
            .sum()
    }
}
