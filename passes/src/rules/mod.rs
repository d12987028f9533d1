//! The rewrite rules, one file per topic, and the small pieces they share: named guards over
//! the analysis, a searcher that matches any of several spellings of one rule, a searcher over
//! whole classes, and an applier that runs a function (for rules that compute attributes or
//! constants). Every rule is directional and says in `docs/passes.md` why it is sound; none is
//! a blanket commutativity or associativity rule.

pub mod algebra;
pub mod attention;
pub mod conv;
pub mod layout;
pub mod norm;
pub mod quant;

use egg::{Applier, Id, Pattern, PatternAst, Rewrite, SearchMatches, Searcher, Subst, Symbol, Var};
use std::sync::Arc;
use vitc_ir::infer::infer_type;
use vitc_ir::{DType, Op, Tensor, TensorType};

use crate::lang::{const_value, ty, VGraph, Vit, VitAnalysis};

/// A rewrite over the vit language.
pub type Rw = Rewrite<Vit, VitAnalysis>;

/// A guard: a named function of the match.
pub type Guard = Box<dyn Fn(&VGraph, &Subst) -> bool + Send + Sync>;

/// Parse a pattern written in the rule tables (a typo there is a programming error).
pub fn pat(s: &str) -> Pattern<Vit> {
    s.parse()
        .unwrap_or_else(|e| panic!("bad pattern {s}: {e:?}"))
}

/// A pattern variable.
pub fn v(s: &str) -> Var {
    s.parse()
        .unwrap_or_else(|e| panic!("bad variable {s}: {e:?}"))
}

/// Matches any of several patterns that bind the same variables: the spellings of one rule.
pub struct AnyOf(pub Vec<Pattern<Vit>>);

impl AnyOf {
    pub fn new(pats: &[&str]) -> AnyOf {
        AnyOf(pats.iter().map(|p| pat(p)).collect())
    }
}

impl Searcher<Vit, VitAnalysis> for AnyOf {
    fn search_eclass_with_limit(
        &self,
        eg: &VGraph,
        eclass: Id,
        limit: usize,
    ) -> Option<SearchMatches<'_, Vit>> {
        let mut substs = Vec::new();
        for p in &self.0 {
            if substs.len() >= limit {
                break;
            }
            if let Some(m) = p.search_eclass_with_limit(eg, eclass, limit - substs.len()) {
                substs.extend(m.substs);
            }
        }
        (!substs.is_empty()).then_some(SearchMatches {
            eclass,
            substs,
            ast: None,
        })
    }

    fn vars(&self) -> Vec<Var> {
        // Only the variables every spelling binds may be used by the applier.
        let mut vars = self.0.first().map(|p| p.vars()).unwrap_or_default();
        for p in &self.0[1..] {
            let pv = p.vars();
            vars.retain(|x| pv.contains(x));
        }
        vars
    }

    fn get_pattern_ast(&self) -> Option<&PatternAst<Vit>> {
        None
    }
}

/// Matches whole classes for which a predicate holds (rules that look at a class's nodes
/// themselves, such as constant folding and layout absorption).
pub struct Classes<F>(pub F);

impl<F> Searcher<Vit, VitAnalysis> for Classes<F>
where
    F: Fn(&VGraph, Id) -> bool + Send + Sync,
{
    fn search_eclass_with_limit(
        &self,
        eg: &VGraph,
        eclass: Id,
        limit: usize,
    ) -> Option<SearchMatches<'_, Vit>> {
        (limit > 0 && (self.0)(eg, eclass)).then(|| SearchMatches {
            eclass,
            substs: vec![Subst::default()],
            ast: None,
        })
    }

    fn vars(&self) -> Vec<Var> {
        vec![]
    }
}

/// An applier that builds the replacement with a function; `None` means the match turned out
/// not to apply. The new class is merged with the matched one.
pub struct Build<F>(pub F);

impl<F> Applier<Vit, VitAnalysis> for Build<F>
where
    F: Fn(&mut VGraph, Id, &Subst) -> Option<Id> + Send + Sync,
{
    fn apply_one(
        &self,
        eg: &mut VGraph,
        eclass: Id,
        subst: &Subst,
        _ast: Option<&PatternAst<Vit>>,
        _rule: Symbol,
    ) -> Vec<Id> {
        match (self.0)(eg, eclass, subst) {
            Some(new) if eg.union(eclass, new) => vec![new],
            _ => vec![],
        }
    }
}

/// A pattern applier behind guards.
pub struct Guarded<A> {
    pub guards: Vec<Guard>,
    pub then: A,
}

impl<A: Applier<Vit, VitAnalysis>> Applier<Vit, VitAnalysis> for Guarded<A> {
    fn apply_one(
        &self,
        eg: &mut VGraph,
        eclass: Id,
        subst: &Subst,
        ast: Option<&PatternAst<Vit>>,
        rule: Symbol,
    ) -> Vec<Id> {
        if self.guards.iter().all(|g| g(eg, subst)) {
            self.then.apply_one(eg, eclass, subst, ast, rule)
        } else {
            vec![]
        }
    }

    fn vars(&self) -> Vec<Var> {
        self.then.vars()
    }
}

/// A rule from a searcher, guards and an applier.
pub fn rule<S, A>(name: &str, searcher: S, guards: Vec<Guard>, then: A) -> Rw
where
    S: Searcher<Vit, VitAnalysis> + Send + Sync + 'static,
    A: Applier<Vit, VitAnalysis> + Send + Sync + 'static,
{
    Rewrite::new(name, searcher, Guarded { guards, then })
        .unwrap_or_else(|e| panic!("rule {name}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Facts about classes

/// The type of the class bound to `var`.
pub fn ty_of<'a>(eg: &'a VGraph, s: &Subst, var: &str) -> Option<&'a TensorType> {
    ty(eg, *s.get(v(var))?)
}

/// The constant tensor bound to `var`, small or large.
pub fn value_of(eg: &VGraph, s: &Subst, var: &str) -> Option<Arc<Tensor>> {
    const_value(eg, s[v(var)])
}

/// The single element of a one-element constant, as f64.
pub fn scalar(eg: &VGraph, id: Id) -> Option<f64> {
    let t = eg[id].data.value.as_ref()?;
    (t.numel() == 1).then(|| t.data.get_f64(0))
}

/// The attribute op bound to `var`.
pub fn attr<'a>(eg: &'a VGraph, s: &Subst, var: &str) -> Option<&'a Op> {
    crate::lang::attr_of(eg, s[v(var)])
}

/// Result type of `op` over operand types, if it type-checks.
pub fn infer(op: &Op, ins: &[&TensorType]) -> Option<TensorType> {
    infer_type(op, ins).ok()
}

/// Whether every element of a constant equals `x`.
pub fn all_equal(t: &Tensor, x: f64) -> bool {
    (0..t.numel()).all(|i| t.data.get_f64(i) == x)
}

// ---------------------------------------------------------------------------------------------
// Named guards shared by several topics

/// `var` is a compile-time constant.
pub fn is_const(var: &'static str) -> Guard {
    Box::new(move |eg, s| eg[s[v(var)]].data.konst)
}

/// `var` is not a compile-time constant.
pub fn is_not_const(var: &'static str) -> Guard {
    Box::new(move |eg, s| !eg[s[v(var)]].data.konst)
}

/// `var` is a one-element constant whose value satisfies `pred`.
pub fn scalar_is(var: &'static str, pred: fn(f64) -> bool) -> Guard {
    Box::new(move |eg, s| scalar(eg, s[v(var)]).is_some_and(pred))
}

/// `var` is an f32 tensor.
pub fn is_f32(var: &'static str) -> Guard {
    Box::new(move |eg, s| ty_of(eg, s, var).is_some_and(|t| t.dtype == DType::F32))
}

/// `a` and `b` have the same type (so replacing one by the other keeps the result type).
pub fn same_type(a: &'static str, b: &'static str) -> Guard {
    Box::new(move |eg, s| ty_of(eg, s, a).is_some() && ty_of(eg, s, a) == ty_of(eg, s, b))
}
