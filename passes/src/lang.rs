//! The e-graph language that mirrors the vit IR, the analysis that carries the facts rules
//! need (type, and the value of small constants), and the conversions IR → e-graph → IR.
//!
//! One e-node kind per IR op (`Vit::Op`, named by the op's text name without `vit.`); ops with
//! attributes take them as a first child, an `Attr` leaf holding the IR op itself, so patterns
//! can bind attributes to variables (`(softmax ?ax ?x)`) and guards read them. Constants with
//! at most [`SMALL_CONST`] elements are leaves hashed by value, so equal scalars share a class;
//! larger ones are `Weight` leaves that name the pass's constant table and never hash tensor
//! data. This module decides nothing about which rewrites are good: that is the rules' and the
//! cost model's job.

use egg::{Analysis, DidMerge, EGraph, Extractor, FromOp, Id, Language, Symbol};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use vitc_ir::infer::infer_type;
use vitc_ir::{BinaryOp, Constants, DType, Module, Node, Op, Tensor, TensorType, UnaryOp, ValueId};

use crate::cost::VitCost;

/// The e-graph the passes run on.
pub type VGraph = EGraph<Vit, VitAnalysis>;

/// Constants with at most this many elements are e-graph leaves carrying their value (and are
/// folded eagerly by the analysis); larger ones are named in the constant table.
pub const SMALL_CONST: usize = 64;

/// An op's attributes, as the IR op itself; equal when their canonical text is.
#[derive(Clone, Debug)]
pub struct OpAttr {
    key: Box<str>,
    op: Op,
}

impl OpAttr {
    pub fn new(op: Op) -> OpAttr {
        // Debug prints every field, floats in their shortest round-trip form, so equal keys
        // mean equal attributes (NaN payloads aside, which no attribute carries).
        OpAttr {
            key: format!("{op:?}").into_boxed_str(),
            op,
        }
    }

    pub fn op(&self) -> &Op {
        &self.op
    }
}

impl PartialEq for OpAttr {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl Eq for OpAttr {}
impl std::hash::Hash for OpAttr {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key.hash(state)
    }
}
impl PartialOrd for OpAttr {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OpAttr {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key.cmp(&other.key)
    }
}

/// A small constant, compared by type and exact bits.
#[derive(Clone, Debug)]
pub struct Lit {
    key: Box<[u8]>,
    t: Arc<Tensor>,
}

impl Lit {
    pub fn new(t: Arc<Tensor>) -> Lit {
        let mut key = vec![t.dtype() as u8, t.shape.len() as u8];
        for d in &t.shape {
            key.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        key.extend_from_slice(&t.data.to_le_bytes());
        Lit {
            key: key.into_boxed_slice(),
            t,
        }
    }

    pub fn tensor(&self) -> &Arc<Tensor> {
        &self.t
    }
}

impl PartialEq for Lit {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl Eq for Lit {}
impl std::hash::Hash for Lit {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key.hash(state)
    }
}
impl PartialOrd for Lit {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Lit {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key.cmp(&other.key)
    }
}

/// An e-node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Vit {
    /// Graph input number `index`.
    Input(usize),
    /// A constant of the pass's constant table, by name.
    Weight(Symbol),
    /// A small constant, by value.
    Lit(Lit),
    /// The attributes of the parent op (its first child).
    Attr(OpAttr),
    /// An op application: the op's name (`matmul`, `softmax` …) and its children, the `Attr`
    /// leaf first when the op has attributes.
    Op(Symbol, Vec<Id>),
}

impl Language for Vit {
    type Discriminant = std::mem::Discriminant<Self>;

    fn discriminant(&self) -> Self::Discriminant {
        std::mem::discriminant(self)
    }

    fn matches(&self, other: &Self) -> bool {
        match (self, other) {
            (Vit::Op(a, ca), Vit::Op(b, cb)) => a == b && ca.len() == cb.len(),
            (Vit::Op(..), _) | (_, Vit::Op(..)) => false,
            _ => self == other,
        }
    }

    fn children(&self) -> &[Id] {
        match self {
            Vit::Op(_, c) => c,
            _ => &[],
        }
    }

    fn children_mut(&mut self) -> &mut [Id] {
        match self {
            Vit::Op(_, c) => c,
            _ => &mut [],
        }
    }
}

impl fmt::Display for Vit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Vit::Input(i) => write!(f, "arg{i}"),
            Vit::Weight(s) => write!(f, "@{s}"),
            Vit::Lit(l) => write!(f, "dense:{}", l.t.ty()),
            Vit::Attr(a) => write!(f, "{{{}}}", a.key),
            Vit::Op(s, _) => write!(f, "{s}"),
        }
    }
}

/// Patterns name ops by their text name; leaves never appear in patterns (guards read them).
impl FromOp for Vit {
    type Error = std::convert::Infallible;

    fn from_op(op: &str, children: Vec<Id>) -> Result<Self, Self::Error> {
        Ok(Vit::Op(Symbol::from(op), children))
    }
}

/// The e-node name of an op: its text name without `vit.`.
pub fn kind_of(op: &Op) -> Symbol {
    let name = op.name();
    Symbol::from(name.strip_prefix("vit.").unwrap_or(&name))
}

/// The op an attribute-free e-node name stands for (unary, binary, `matmul`, `where`).
pub fn plain_op(name: &str) -> Option<Op> {
    if name == "matmul" {
        return Some(Op::MatMul);
    }
    if name == "where" {
        return Some(Op::Where);
    }
    if let Some(u) = UnaryOp::ALL.into_iter().find(|u| u.name() == name) {
        return Some(Op::Unary(u));
    }
    BinaryOp::ALL
        .into_iter()
        .find(|b| b.name() == name)
        .map(Op::Binary)
}

/// Whether the op keeps attributes (and so an `Attr` first child).
pub fn has_attr(op: &Op) -> bool {
    !matches!(
        op,
        Op::Unary(_) | Op::Binary(_) | Op::MatMul | Op::Where | Op::Input { .. }
    )
}

/// Whether an e-node name is an attribute-free op (so all its children are operands).
pub fn is_plain(name: &str) -> bool {
    matches!(
        name,
        "matmul"
            | "where"
            | "neg"
            | "abs"
            | "sqrt"
            | "rsqrt"
            | "reciprocal"
            | "exp"
            | "log"
            | "erf"
            | "tanh"
            | "sigmoid"
            | "relu"
            | "hard_swish"
            | "hard_sigmoid"
            | "silu"
            | "floor"
            | "ceil"
            | "round"
            | "not"
            | "add"
            | "sub"
            | "mul"
            | "div"
            | "pow"
            | "mod"
            | "max"
            | "min"
            | "equal"
            | "less"
            | "greater"
            | "and"
            | "or"
    )
}

/// The tensor operands of an e-node (its children without the attribute leaf).
pub fn operands(node: &Vit) -> &[Id] {
    match node {
        Vit::Op(s, c) if !is_plain(s.as_str()) && !c.is_empty() => &c[1..],
        Vit::Op(_, c) => c,
        _ => &[],
    }
}

/// The attribute op of an `Attr` class.
pub fn attr_of(eg: &VGraph, id: Id) -> Option<&Op> {
    eg[id].nodes.iter().find_map(|n| match n {
        Vit::Attr(a) => Some(a.op()),
        _ => None,
    })
}

/// The IR op an `Op` e-node applies.
pub fn node_op(eg: &VGraph, node: &Vit) -> Option<Op> {
    match node {
        Vit::Op(s, _) if is_plain(s.as_str()) => plain_op(s.as_str()),
        Vit::Op(s, c) => {
            let op = attr_of(eg, *c.first()?)?;
            (kind_of(op) == *s).then(|| op.clone())
        }
        _ => None,
    }
}

/// Add an op application over `args` (tensor operands), with its attribute leaf if it has one.
pub fn add_op(eg: &mut VGraph, op: Op, args: &[Id]) -> Id {
    let kind = kind_of(&op);
    let mut children = Vec::with_capacity(args.len() + 1);
    if has_attr(&op) {
        children.push(eg.add(Vit::Attr(OpAttr::new(op))));
    }
    children.extend_from_slice(args);
    eg.add(Vit::Op(kind, children))
}

/// Add a constant: small ones by value, large ones under a table name derived from `name`
/// (an existing entry with the same derivation is reused, so rules that fire again do not copy
/// tensors again).
pub fn add_const(eg: &mut VGraph, derivation: &str, name: &str, t: Tensor) -> Id {
    if t.numel() <= SMALL_CONST {
        return eg.add(Vit::Lit(Lit::new(Arc::new(t))));
    }
    if let Some(s) = eg.analysis.derived.get(derivation) {
        let s = *s;
        return eg.add(Vit::Weight(s));
    }
    let base = if name.is_empty() { "c" } else { name };
    let key = if eg.analysis.consts.contains_key(base) {
        (1..)
            .map(|i| format!("{base}.{i}"))
            .find(|n| !eg.analysis.consts.contains_key(n))
            .expect("an unused name exists")
    } else {
        base.to_string()
    };
    eg.analysis.consts.insert(key.clone(), Arc::new(t));
    let s = Symbol::from(&key);
    eg.analysis.derived.insert(derivation.to_string(), s);
    eg.add(Vit::Weight(s))
}

/// Give a class a rule made the location of the class it was derived from (when it has none).
pub fn inherit_loc(eg: &mut VGraph, new: Id, from: Id) {
    let loc = eg
        .analysis
        .locs
        .get(&from)
        .or_else(|| eg.analysis.locs.get(&eg.find(from)))
        .cloned();
    if let Some(loc) = loc {
        eg.analysis.locs.entry(new).or_insert(loc);
    }
}

/// The location a fused op over the classes `parts` gets: the scope they share (the common
/// prefix of their locations up to a `/`) followed by `name`.
pub fn fused_loc(eg: &mut VGraph, new: Id, parts: &[Id], name: &str) {
    let locs: Vec<String> = parts
        .iter()
        .filter_map(|p| {
            eg.analysis
                .locs
                .get(p)
                .or_else(|| eg.analysis.locs.get(&eg.find(*p)))
                .cloned()
        })
        .collect();
    let Some(first) = locs.first() else {
        return;
    };
    let mut prefix = first.as_str();
    for l in &locs[1..] {
        let n = prefix
            .char_indices()
            .zip(l.chars())
            .take_while(|((_, a), b)| a == b)
            .last()
            .map_or(0, |((i, a), _)| i + a.len_utf8());
        prefix = &prefix[..n];
    }
    let scope = &prefix[..prefix.rfind('/').map_or(0, |i| i + 1)];
    eg.analysis.fused_locs.insert(new, format!("{scope}{name}"));
}

/// Copy the fused location of class `from` (if any) to `new`.
pub fn inherit_fused_loc(eg: &mut VGraph, new: Id, from: Id) {
    let loc = eg
        .analysis
        .fused_locs
        .get(&from)
        .or_else(|| eg.analysis.fused_locs.get(&eg.find(from)))
        .cloned();
    if let Some(loc) = loc {
        eg.analysis.fused_locs.entry(new).or_insert(loc);
    }
}

/// The type of a class (`None` for attribute leaves).
pub fn ty(eg: &VGraph, id: Id) -> Option<&TensorType> {
    eg[id].data.ty.as_ref()
}

/// The constant tensor a class holds, small or large.
pub fn const_value(eg: &VGraph, id: Id) -> Option<Arc<Tensor>> {
    let class = &eg[id];
    if let Some(v) = &class.data.value {
        return Some(v.clone());
    }
    class.nodes.iter().find_map(|n| match n {
        Vit::Weight(s) => eg.analysis.consts.get(s.as_str()).cloned(),
        Vit::Lit(l) => Some(l.t.clone()),
        _ => None,
    })
}

/// The facts of one e-class.
#[derive(Clone, Debug)]
pub struct VitData {
    /// Result type; `None` only for attribute leaves.
    pub ty: Option<TensorType>,
    /// Whether the value is known at compile time.
    pub konst: bool,
    /// The value, for constants with at most [`SMALL_CONST`] elements.
    pub value: Option<Arc<Tensor>>,
}

/// The analysis, and the side tables a pass carries with its e-graph.
#[derive(Debug, Default)]
pub struct VitAnalysis {
    /// Types of the graph inputs.
    pub inputs: Vec<TensorType>,
    /// The constant table: the module's constants and those the rules make.
    pub consts: Constants,
    /// Rule-made constants by derivation (`op|operands`), so each is computed once.
    pub derived: HashMap<String, Symbol>,
    /// Locations rules chose for the classes they created.
    pub locs: HashMap<Id, String>,
    /// Locations of fused ops, by the class of the fused node: preferred over the location of
    /// the value the fused op replaces (an attention is named after its scope, not after the
    /// reshape it absorbed last).
    pub fused_locs: HashMap<Id, String>,
    /// The first unsound merge seen (release builds; debug builds panic).
    pub unsound: Option<String>,
    /// Constants the analysis folded (small results).
    pub small_folds: usize,
}

/// Whether constant folding may evaluate `op` (everything but quantized-weight dequantization,
/// which the quantized ops consume as it is).
pub fn foldable(op: &Op, operand_types: &[&TensorType]) -> bool {
    match op {
        Op::Input { .. } | Op::Constant { .. } => false,
        Op::Dequantize { .. } => !matches!(
            operand_types.first().map(|t| t.dtype),
            Some(DType::I8 | DType::U8)
        ),
        _ => true,
    }
}

impl Analysis<Vit> for VitAnalysis {
    type Data = VitData;

    fn make(eg: &mut VGraph, enode: &Vit, _id: Id) -> VitData {
        let none = VitData {
            ty: None,
            konst: false,
            value: None,
        };
        match enode {
            Vit::Input(i) => VitData {
                ty: eg.analysis.inputs.get(*i).cloned(),
                ..none
            },
            Vit::Weight(s) => VitData {
                ty: eg.analysis.consts.get(s.as_str()).map(|t| t.ty()),
                konst: true,
                value: None,
            },
            Vit::Lit(l) => VitData {
                ty: Some(l.t.ty()),
                konst: true,
                value: Some(l.t.clone()),
            },
            Vit::Attr(_) => none,
            Vit::Op(..) => {
                let Some(op) = node_op(eg, enode) else {
                    return fail_make(eg, format!("e-node {enode} has no attribute leaf"));
                };
                let args = operands(enode);
                let mut tys = Vec::with_capacity(args.len());
                for &a in args {
                    match &eg[a].data.ty {
                        Some(t) => tys.push(t.clone()),
                        None => {
                            return fail_make(eg, format!("{} has an untyped operand", op.name()))
                        }
                    }
                }
                let refs: Vec<&TensorType> = tys.iter().collect();
                let ty = match infer_type(&op, &refs) {
                    Ok(t) => t,
                    Err(msg) => return fail_make(eg, format!("{}: {msg}", op.name())),
                };
                let konst = args.iter().all(|&a| eg[a].data.konst);
                let mut value = None;
                if konst && ty.numel() <= SMALL_CONST && foldable(&op, &refs) {
                    let vals: Option<Vec<Arc<Tensor>>> =
                        args.iter().map(|&a| eg[a].data.value.clone()).collect();
                    if let Some(vals) = vals {
                        let ins: Vec<&Tensor> = vals.iter().map(|t| t.as_ref()).collect();
                        value = vitc_ir::interp::eval(&op, &ins, &ty).ok().map(Arc::new);
                    }
                }
                VitData {
                    ty: Some(ty),
                    konst,
                    value,
                }
            }
        }
    }

    fn merge(&mut self, a: &mut VitData, b: VitData) -> DidMerge {
        if a.ty != b.ty {
            let show = |t: &Option<TensorType>| {
                t.as_ref()
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "an attribute".into())
            };
            let msg = format!(
                "a rewrite merged a class of type {} with one of type {}",
                show(&a.ty),
                show(&b.ty)
            );
            // An unsound rule must fail loudly where tests run; release builds report it.
            if cfg!(debug_assertions) {
                panic!("unsound rewrite: {msg}");
            }
            self.unsound.get_or_insert(msg);
        }
        let (mut da, mut db) = (false, false);
        if b.konst && !a.konst {
            a.konst = true;
            da = true;
        } else if a.konst && !b.konst {
            db = true;
        }
        match (&a.value, b.value) {
            (None, Some(v)) => {
                a.value = Some(v);
                da = true;
            }
            (Some(_), None) => db = true,
            _ => {}
        }
        DidMerge(da, db)
    }

    fn modify(eg: &mut VGraph, id: Id) {
        let Some(v) = eg[id].data.value.clone() else {
            return;
        };
        if eg[id].nodes.iter().any(|n| matches!(n, Vit::Lit(_))) {
            return;
        }
        let lit = eg.add(Vit::Lit(Lit::new(v)));
        eg.union(id, lit);
        eg.analysis.small_folds += 1;
    }
}

fn fail_make(eg: &mut VGraph, msg: String) -> VitData {
    if cfg!(debug_assertions) {
        panic!("ill-typed e-node: {msg}");
    }
    eg.analysis.unsound.get_or_insert(msg);
    VitData {
        ty: None,
        konst: false,
        value: None,
    }
}

/// Where an IR node went in the e-graph, for naming the nodes extraction produces.
#[derive(Clone, Debug)]
pub struct Origin {
    pub class: Id,
    pub kind: Symbol,
    pub loc: String,
}

/// A module as an e-graph: the graph, its output classes, and where each node went.
pub struct Loaded {
    pub egraph: VGraph,
    pub roots: Vec<Id>,
    pub origins: Vec<Origin>,
}

/// Build the e-graph of a verified module.
pub fn to_egraph(m: &Module) -> Loaded {
    let analysis = VitAnalysis {
        inputs: m.inputs.iter().map(|(_, v)| m.ty(*v).clone()).collect(),
        consts: m.constants.clone(),
        ..Default::default()
    };
    let mut eg = VGraph::new(analysis);
    let mut ids: Vec<Id> = Vec::with_capacity(m.nodes.len());
    let mut origins = Vec::with_capacity(m.nodes.len());
    for n in &m.nodes {
        let (id, kind) = match &n.op {
            Op::Input { index } => (eg.add(Vit::Input(*index)), Symbol::from("input")),
            Op::Constant { name } => {
                let id = match m.constants.get(name) {
                    Some(t) if t.numel() <= SMALL_CONST => eg.add(Vit::Lit(Lit::new(t.clone()))),
                    _ => eg.add(Vit::Weight(Symbol::from(name))),
                };
                (id, Symbol::from("constant"))
            }
            op => {
                let args: Vec<Id> = n.inputs.iter().map(|v| ids[v.0]).collect();
                (add_op(&mut eg, op.clone(), &args), kind_of(op))
            }
        };
        ids.push(id);
        if !n.name.is_empty() {
            eg.analysis.locs.entry(id).or_insert_with(|| n.name.clone());
        }
        origins.push(Origin {
            class: id,
            kind,
            loc: n.name.clone(),
        });
    }
    eg.rebuild();
    let roots = m.outputs.iter().map(|(_, v)| ids[v.0]).collect();
    Loaded {
        egraph: eg,
        roots,
        origins,
    }
}

/// Extract the cheapest module from the e-graph (by [`VitCost`]), keeping the input and
/// output names of `template`.
pub fn to_module(
    eg: &VGraph,
    roots: &[Id],
    origins: &[Origin],
    template: &Module,
) -> Result<Module, String> {
    let choice = crate::extract::extract(eg);
    match emit(eg, roots, origins, template, &|id| {
        choice.best.get(&id).cloned()
    }) {
        Ok(m) => Ok(m),
        // The greedy DAG choice can, rarely, close a cycle; egg's tree extractor cannot.
        Err(Emit::Cycle) => {
            let ext = Extractor::new(eg, VitCost::new(eg));
            emit(eg, roots, origins, template, &|id| {
                Some(ext.find_best_node(id).clone())
            })
            .map_err(|e| match e {
                Emit::Cycle => "the extracted graph has a cycle".to_string(),
                Emit::Failed(msg) => msg,
            })
        }
        Err(Emit::Failed(msg)) => Err(msg),
    }
}

enum Emit {
    Cycle,
    Failed(String),
}

impl From<String> for Emit {
    fn from(s: String) -> Self {
        Emit::Failed(s)
    }
}

impl From<&str> for Emit {
    fn from(s: &str) -> Self {
        Emit::Failed(s.to_string())
    }
}

fn emit(
    eg: &VGraph,
    roots: &[Id],
    origins: &[Origin],
    template: &Module,
    best: &dyn Fn(Id) -> Option<Vit>,
) -> Result<Module, Emit> {
    // The location of an extracted node: an original node of its class with the same op if
    // there is one (so a kept op keeps its name), else the latest original in the class (the
    // value a fused op replaces), else what the rule that made the class chose.
    let mut by_class: HashMap<Id, Vec<&Origin>> = HashMap::new();
    for o in origins {
        by_class.entry(eg.find(o.class)).or_default().push(o);
    }
    let fused_locs: HashMap<Id, &String> = eg
        .analysis
        .fused_locs
        .iter()
        .map(|(id, l)| (eg.find(*id), l))
        .collect();
    let rule_locs: HashMap<Id, &String> = eg
        .analysis
        .locs
        .iter()
        .map(|(id, l)| (eg.find(*id), l))
        .collect();
    let loc_of = |class: Id, kind: Option<Symbol>| -> Option<String> {
        if let Some(os) = by_class.get(&class) {
            if let Some(o) = os.iter().find(|o| Some(o.kind) == kind) {
                return Some(o.loc.clone());
            }
        }
        if let Some(l) = fused_locs.get(&class) {
            return Some(l.to_string());
        }
        if let Some(os) = by_class.get(&class) {
            return os.last().map(|o| o.loc.clone());
        }
        rule_locs.get(&class).map(|s| s.to_string())
    };

    let mut out = Module::new(template.name.clone());
    for (name, v) in &template.inputs {
        out.add_input(name.clone(), template.ty(*v).clone());
    }
    let mut memo: HashMap<Id, ValueId> = HashMap::new();
    let mut open: std::collections::HashSet<Id> = std::collections::HashSet::new();
    for &root in roots {
        // Iterative post-order: models are deep enough that recursion is a risk.
        let mut stack: Vec<(Id, bool, String)> = vec![(eg.find(root), false, String::new())];
        while let Some((id, expanded, parent_loc)) = stack.pop() {
            if memo.contains_key(&id) {
                continue;
            }
            if !expanded && open.contains(&id) {
                return Err(Emit::Cycle);
            }
            let node = best(id).ok_or("a needed class has no finite-cost node")?;
            let kind = match &node {
                Vit::Op(s, _) => Some(*s),
                Vit::Weight(_) | Vit::Lit(_) => Some(Symbol::from("constant")),
                _ => None,
            };
            let loc = loc_of(id, kind).unwrap_or_else(|| parent_loc.clone());
            let v = match &node {
                Vit::Input(i) => match out.inputs.get(*i) {
                    Some((_, v)) => *v,
                    None => return Err(format!("input {i} is not in the module").into()),
                },
                Vit::Weight(s) => {
                    let t = eg
                        .analysis
                        .consts
                        .get(s.as_str())
                        .ok_or_else(|| format!("constant @{s} has no data"))?;
                    out.constants.insert(s.to_string(), t.clone());
                    out.push(Node {
                        op: Op::Constant {
                            name: s.to_string(),
                        },
                        inputs: vec![],
                        ty: t.ty(),
                        name: loc,
                    })
                }
                Vit::Lit(l) => {
                    let v = out.add_constant(
                        if loc.is_empty() { "cst" } else { &loc },
                        Tensor::clone(l.tensor()),
                    );
                    out.nodes[v.0].name = loc;
                    v
                }
                Vit::Attr(_) => return Err("an attribute leaf is not a value".into()),
                Vit::Op(..) => {
                    let args: Vec<Id> = operands(&node).iter().map(|&a| eg.find(a)).collect();
                    if !expanded {
                        open.insert(id);
                        stack.push((id, true, parent_loc));
                        for &a in args.iter().rev() {
                            if !memo.contains_key(&a) {
                                stack.push((a, false, loc.clone()));
                            }
                        }
                        continue;
                    }
                    let op = node_op(eg, &node).ok_or("an op e-node lost its attributes")?;
                    let inputs: Vec<ValueId> = args
                        .iter()
                        .map(|a| memo.get(a).copied().ok_or("operand not emitted before use"))
                        .collect::<Result<_, _>>()?;
                    out.add(op, inputs, loc).map_err(|e| e.to_string())?
                }
            };
            open.remove(&id);
            memo.insert(id, v);
        }
    }
    out.outputs = template
        .outputs
        .iter()
        .zip(roots)
        .map(|((name, _), r)| (name.clone(), memo[&eg.find(*r)]))
        .collect();
    Ok(out)
}
