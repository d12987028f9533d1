//! The text-form parser: the inverse of [`crate::print`].
//!
//! A hand-written lexer and a recursive-descent parser over the grammar the printer writes,
//! plus what people write by hand: `// comments`, free whitespace, any SSA names (`%x`,
//! `%q.1`), optional `{vit.name = …}` on arguments and results, and `dense<x>` splats of small
//! constants. Each node is type-checked as it is read so that an error points at the line it
//! is about; the finished module is then verified as a whole. The input is untrusted: every
//! problem is an [`IrError::Parse`] with a line, a column and a message for a person, never a
//! panic, and nothing the text says can make the parser allocate more than a small multiple of
//! the text's own size. `@name` constant handles are looked up in the caller's constant store;
//! the parser never reads files.
//!
//! ```text
//! module   := 'module' symbol? '{' 'func.func' '@main' '(' args? ')' '->' results '{'
//!             stmt* 'return' (value (',' value)* ':' type (',' type)*)? '}' '}'
//! args     := value ':' type name? (',' value ':' type name?)*
//! results  := type | '(' (type name? (',' type name?)*)? ')'
//! name     := '{' 'vit.name' '=' string '}'        (default: the SSA name, without `%`)
//! stmt     := value '=' 'vit.constant' (symbol | 'dense' '<' (lit | '[' lits? ']') '>')
//!                 ':' type loc?
//!           | value '=' opname (value (',' value)*)? attrs? ':' '(' types? ')' '->' type loc?
//! attrs    := '{' (ident '=' attr (',' ident '=' attr)*)? '}'
//! attr     := number | string | 'true' | 'false' | '[' (number (',' number)*)? ']'
//! loc      := 'loc' '(' string ')'
//! type     := 'tensor<' (digits 'x')* dtype '>'
//! symbol   := '@' bare-id | '@' string;   value := '%' [a-zA-Z0-9_$.-]+
//! ```

use crate::error::IrError;
use crate::infer::infer_type;
use crate::module::{Constants, Module, Node, ValueId};
use crate::op::{Activation, AttnLayout, BinaryOp, Op, ReduceOp, UnaryOp};
use crate::print::INLINE_LIMIT;
use crate::types::{checked_numel, DType, Data, Tensor, TensorType, MAX_NUMEL};
use half::{bf16, f16};
use std::collections::HashMap;
use std::str::Chars;
use std::sync::Arc;

/// Parse the text form; `@name` constant handles are looked up in `constants`.
pub fn parse_module(text: &str, constants: &Constants) -> Result<Module, IrError> {
    let mut p = Parser {
        lex: Lexer {
            rest: text.chars(),
            pos: Pos { line: 1, col: 1 },
        },
        peeked: None,
        constants,
        m: Module::default(),
        values: HashMap::new(),
        inline: Vec::new(),
    };
    p.module()?;
    let m = p.m;
    crate::verify::verify(&m)?;
    Ok(m)
}

/// Base name of the constants that inline `dense<…>` literals create (`cst`, `cst.1`, …).
const INLINE_CONSTANT_NAME: &str = "cst";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pos {
    line: usize,
    col: usize,
}

fn err(pos: Pos, msg: impl Into<String>) -> IrError {
    IrError::Parse {
        line: pos.line,
        col: pos.col,
        msg: msg.into(),
    }
}

type R<T> = Result<T, IrError>;

// ---------------------------------------------------------------------------------------------
// Lexer

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    /// `module`, `func.func`, `vit.add`, `has_bias`, `true`, `loc`, …
    Ident(String),
    /// `%name`, without the `%`.
    Value(String),
    /// `@name` or `@"name"`, without the `@`, unescaped.
    Symbol(String),
    /// A quoted string, unescaped.
    Str(String),
    /// A number exactly as written: `-3`, `1.5e-6`, `0x7FC00000`.
    Num(String),
    /// The inside of `tensor<…>`: `1x3xf32`. Lexed whole because `1x3` is not a number.
    Type(String),
    Punct(char),
    Arrow,
    Eof,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Value(s) => format!("`%{s}`"),
            Tok::Symbol(s) => format!("`@{s}`"),
            Tok::Str(s) => format!("string {s:?}"),
            Tok::Num(s) => format!("number `{s}`"),
            Tok::Type(s) => format!("`tensor<{s}>`"),
            Tok::Punct(c) => format!("`{c}`"),
            Tok::Arrow => "`->`".into(),
            Tok::Eof => "end of input".into(),
        }
    }
}

struct Lexer<'a> {
    rest: Chars<'a>,
    pos: Pos,
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '.')
}

fn is_value_char(c: char) -> bool {
    is_id_char(c) || c == '-'
}

impl Lexer<'_> {
    fn peek(&self) -> Option<char> {
        self.rest.clone().next()
    }

    fn peek2(&self) -> Option<char> {
        let mut c = self.rest.clone();
        c.next();
        c.next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.rest.next()?;
        if c == '\n' {
            self.pos.line += 1;
            self.pos.col = 1;
        } else {
            self.pos.col += 1;
        }
        Some(c)
    }

    fn take_while(&mut self, f: impl Fn(char) -> bool) -> String {
        let mut s = String::new();
        while let Some(c) = self.peek().filter(|&c| f(c)) {
            s.push(c);
            self.bump();
        }
        s
    }

    fn skip_trivia(&mut self) {
        loop {
            match self.peek() {
                Some(c) if c.is_whitespace() => {
                    self.bump();
                }
                Some('/') if self.peek2() == Some('/') => {
                    while self.peek().is_some_and(|c| c != '\n') {
                        self.bump();
                    }
                }
                _ => return,
            }
        }
    }

    fn next(&mut self) -> R<(Tok, Pos)> {
        self.skip_trivia();
        let pos = self.pos;
        let Some(c) = self.peek() else {
            return Ok((Tok::Eof, pos));
        };
        let tok = match c {
            '%' => {
                self.bump();
                let s = self.take_while(is_value_char);
                if s.is_empty() {
                    return Err(err(pos, "expected a value name after `%`"));
                }
                Tok::Value(s)
            }
            '@' => {
                self.bump();
                match self.peek() {
                    Some('"') => Tok::Symbol(self.string()?),
                    Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                        Tok::Symbol(self.take_while(is_id_char))
                    }
                    _ => return Err(err(pos, "expected a name or a quoted string after `@`")),
                }
            }
            '"' => Tok::Str(self.string()?),
            '-' if self.peek2() == Some('>') => {
                self.bump();
                self.bump();
                Tok::Arrow
            }
            '-' | '0'..='9' => self.number()?,
            c if c.is_ascii_alphabetic() || c == '_' => {
                let s = self.take_while(is_id_char);
                if s == "tensor" && self.peek() == Some('<') {
                    self.bump();
                    let body = self.take_while(|c| c.is_ascii_alphanumeric());
                    match self.peek() {
                        Some('>') => {
                            self.bump();
                        }
                        Some(c) => {
                            return Err(err(
                                self.pos,
                                format!(
                                    "unexpected `{c}` in a tensor type (write static shapes \
                                     like tensor<1x3xf32>)"
                                ),
                            ))
                        }
                        None => return Err(err(pos, "unterminated tensor type")),
                    }
                    Tok::Type(body)
                } else {
                    Tok::Ident(s)
                }
            }
            '{' | '}' | '(' | ')' | '[' | ']' | '<' | '>' | ',' | ':' | '=' => {
                self.bump();
                Tok::Punct(c)
            }
            c => return Err(err(pos, format!("unexpected character {c:?}"))),
        };
        Ok((tok, pos))
    }

    /// `-?digits(.digits*)?([eE][+-]?digits)?` or `0x` hex digits.
    fn number(&mut self) -> R<Tok> {
        let pos = self.pos;
        let mut s = String::new();
        if self.peek() == Some('-') {
            self.bump();
            s.push('-');
        }
        if self.peek() == Some('0') && matches!(self.peek2(), Some('x' | 'X')) {
            self.bump();
            self.bump();
            s.push_str("0x");
            let h = self.take_while(|c| c.is_ascii_hexdigit());
            if h.is_empty() {
                return Err(err(pos, "expected hex digits after `0x`"));
            }
            s.push_str(&h);
        } else {
            let d = self.take_while(|c| c.is_ascii_digit());
            if d.is_empty() {
                return Err(err(pos, "expected a digit after `-`"));
            }
            s.push_str(&d);
            if self.peek() == Some('.') {
                self.bump();
                s.push('.');
                s.push_str(&self.take_while(|c| c.is_ascii_digit()));
            }
            if matches!(self.peek(), Some('e' | 'E')) {
                self.bump();
                s.push('e');
                if let Some(c @ ('+' | '-')) = self.peek() {
                    self.bump();
                    s.push(c);
                }
                let e = self.take_while(|c| c.is_ascii_digit());
                if e.is_empty() {
                    return Err(err(pos, "expected digits in the exponent"));
                }
                s.push_str(&e);
            }
        }
        if let Some(c) = self.peek().filter(|&c| is_id_char(c)) {
            return Err(err(
                pos,
                format!("malformed number (`{s}` followed by `{c}`)"),
            ));
        }
        Ok(Tok::Num(s))
    }

    /// A quoted string; the escapes are the printer's (`\"`, `\\`, `\XX` hex bytes) plus `\n`
    /// and `\t` for hand-written text.
    fn string(&mut self) -> R<String> {
        let start = self.pos;
        self.bump();
        let mut bytes = Vec::new();
        loop {
            let at = self.pos;
            match self.bump() {
                None | Some('\n') => return Err(err(start, "unterminated string")),
                Some('"') => break,
                Some('\\') => match self.bump() {
                    Some('"') => bytes.push(b'"'),
                    Some('\\') => bytes.push(b'\\'),
                    Some('n') => bytes.push(b'\n'),
                    Some('t') => bytes.push(b'\t'),
                    Some(h) if h.is_ascii_hexdigit() => {
                        let l = self.bump().filter(|c| c.is_ascii_hexdigit());
                        let byte = l.and_then(|l| u8::from_str_radix(&format!("{h}{l}"), 16).ok());
                        match byte {
                            Some(b) => bytes.push(b),
                            None => return Err(err(at, "a `\\` hex escape needs two hex digits")),
                        }
                    }
                    _ => {
                        return Err(err(
                            at,
                            "unknown escape (use \\\", \\\\, \\n, \\t or \\XX hex)",
                        ))
                    }
                },
                Some(c) => {
                    let mut b = [0u8; 4];
                    bytes.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                }
            }
        }
        String::from_utf8(bytes).map_err(|_| err(start, "string escapes do not form valid UTF-8"))
    }
}

// ---------------------------------------------------------------------------------------------
// Attributes

#[derive(Clone, Debug)]
enum AttrVal {
    Num(String),
    Str(String),
    Bool(bool),
    List(Vec<(String, Pos)>),
}

impl AttrVal {
    fn describe(&self) -> String {
        match self {
            AttrVal::Num(s) => format!("`{s}`"),
            AttrVal::Str(s) => format!("{s:?}"),
            AttrVal::Bool(b) => format!("`{b}`"),
            AttrVal::List(_) => "a list".into(),
        }
    }
}

struct Attr {
    key: String,
    val: AttrVal,
    pos: Pos,
}

/// The attributes written on one op; each typed getter removes what it reads.
struct Attrs {
    items: Vec<Attr>,
    /// The op name and where it was written, for "missing attribute" errors.
    op: String,
    op_pos: Pos,
}

fn int_in_range(text: &str) -> Option<i64> {
    let x: i64 = text.parse().ok()?;
    // No attribute means anything beyond the largest tensor vitc accepts; bounding them here
    // keeps the shape arithmetic of type inference far from overflow.
    (x.unsigned_abs() <= MAX_NUMEL as u64).then_some(x)
}

/// An f32 as the printer writes it: decimal, or the hex bit pattern for non-finite values.
fn parse_f32(text: &str) -> Option<f32> {
    if let Some(h) = text.strip_prefix("0x") {
        return u32::from_str_radix(h, 16).ok().map(f32::from_bits);
    }
    text.parse::<f32>().ok()
}

impl Attrs {
    fn take(&mut self, key: &str) -> Option<(AttrVal, Pos)> {
        let i = self.items.iter().position(|a| a.key == key)?;
        let a = self.items.remove(i);
        Some((a.val, a.pos))
    }

    fn required(&mut self, key: &str) -> R<(AttrVal, Pos)> {
        self.take(key).ok_or_else(|| {
            err(
                self.op_pos,
                format!("`{}` is missing attribute `{key}`", self.op),
            )
        })
    }

    fn bad(key: &str, want: &str, v: &AttrVal, pos: Pos) -> IrError {
        err(
            pos,
            format!("attribute `{key}` must be {want}, got {}", v.describe()),
        )
    }

    fn to_usize(key: &str, v: &AttrVal, text: &str, pos: Pos) -> R<usize> {
        match int_in_range(text) {
            Some(x) if x >= 0 => Ok(x as usize),
            _ => Err(Self::bad(key, "an integer in 0..=2^40", v, pos)),
        }
    }

    fn usize(&mut self, key: &str) -> R<usize> {
        let (v, pos) = self.required(key)?;
        match &v {
            AttrVal::Num(t) => Self::to_usize(key, &v, t, pos),
            _ => Err(Self::bad(key, "an integer in 0..=2^40", &v, pos)),
        }
    }

    fn opt_usize(&mut self, key: &str) -> R<Option<usize>> {
        match self.take(key) {
            None => Ok(None),
            Some((v, pos)) => match &v {
                AttrVal::Num(t) => Self::to_usize(key, &v, t, pos).map(Some),
                _ => Err(Self::bad(key, "an integer in 0..=2^40", &v, pos)),
            },
        }
    }

    fn i32(&mut self, key: &str) -> R<i32> {
        let (v, pos) = self.required(key)?;
        match &v {
            AttrVal::Num(t) => t
                .parse::<i32>()
                .map_err(|_| Self::bad(key, "a 32-bit integer", &v, pos)),
            _ => Err(Self::bad(key, "a 32-bit integer", &v, pos)),
        }
    }

    fn f32_of(key: &str, v: AttrVal, pos: Pos) -> R<f32> {
        match &v {
            AttrVal::Num(t) => parse_f32(t).ok_or_else(|| Self::bad(key, "a float", &v, pos)),
            _ => Err(Self::bad(key, "a float", &v, pos)),
        }
    }

    fn f32(&mut self, key: &str) -> R<f32> {
        let (v, pos) = self.required(key)?;
        Self::f32_of(key, v, pos)
    }

    fn opt_f32(&mut self, key: &str) -> R<Option<f32>> {
        match self.take(key) {
            None => Ok(None),
            Some((v, pos)) => Self::f32_of(key, v, pos).map(Some),
        }
    }

    fn boolean(&mut self, key: &str) -> R<bool> {
        let (v, pos) = self.required(key)?;
        match v {
            AttrVal::Bool(b) => Ok(b),
            v => Err(Self::bad(key, "`true` or `false`", &v, pos)),
        }
    }

    /// A `has_*` flag: absent means false.
    fn flag(&mut self, key: &str) -> R<bool> {
        match self.take(key) {
            None => Ok(false),
            Some((AttrVal::Bool(b), _)) => Ok(b),
            Some((v, pos)) => Err(Self::bad(key, "`true` or `false`", &v, pos)),
        }
    }

    fn list(&mut self, key: &str) -> R<Vec<(String, Pos)>> {
        let (v, pos) = self.required(key)?;
        match v {
            AttrVal::List(xs) => Ok(xs),
            v => Err(Self::bad(key, "a list of integers", &v, pos)),
        }
    }

    fn usizes(&mut self, key: &str) -> R<Vec<usize>> {
        self.list(key)?
            .into_iter()
            .map(|(t, pos)| match int_in_range(&t) {
                Some(x) if x >= 0 => Ok(x as usize),
                _ => Err(err(
                    pos,
                    format!("attribute `{key}` needs integers in 0..=2^40, got `{t}`"),
                )),
            })
            .collect()
    }

    fn i64s(&mut self, key: &str) -> R<Vec<i64>> {
        self.list(key)?
            .into_iter()
            .map(|(t, pos)| {
                int_in_range(&t).ok_or_else(|| {
                    err(
                        pos,
                        format!("attribute `{key}` needs integers in -2^40..=2^40, got `{t}`"),
                    )
                })
            })
            .collect()
    }

    fn usize_array<const N: usize>(&mut self, key: &str) -> R<[usize; N]> {
        let pos = self.items.iter().find(|a| a.key == key).map(|a| a.pos);
        let v = self.usizes(key)?;
        v.as_slice().try_into().map_err(|_| {
            err(
                pos.unwrap_or(self.op_pos),
                format!("attribute `{key}` needs {N} entries, got {}", v.len()),
            )
        })
    }

    /// A string naming one of `all` (an enum of the op set).
    /// As [`Attrs::choice`], `None` when the attribute is absent.
    fn opt_choice<T: Copy>(
        &mut self,
        key: &str,
        all: &[T],
        name: impl Fn(T) -> &'static str,
    ) -> R<Option<T>> {
        if !self.items.iter().any(|a| a.key == key) {
            return Ok(None);
        }
        self.choice(key, all, name).map(Some)
    }

    fn choice<T: Copy>(&mut self, key: &str, all: &[T], name: impl Fn(T) -> &'static str) -> R<T> {
        let (v, pos) = self.required(key)?;
        if let AttrVal::Str(s) = &v {
            if let Some(x) = all.iter().copied().find(|&x| name(x) == s) {
                return Ok(x);
            }
        }
        let names: Vec<String> = all.iter().map(|&x| format!("{:?}", name(x))).collect();
        Err(Self::bad(
            key,
            &format!("one of {}", names.join(", ")),
            &v,
            pos,
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Ops

#[derive(Clone, Copy)]
enum Kind {
    Unary(UnaryOp),
    Binary(BinaryOp),
    Reduce(ReduceOp),
    Other(&'static str),
}

/// The ops whose attributes are not encoded in their name, with the attributes each accepts.
const OTHER_OPS: &[(&str, &[&str])] = &[
    ("where", &[]),
    ("clip", &["max", "min"]),
    ("cast", &[]),
    ("matmul", &[]),
    (
        "conv",
        &[
            "activation",
            "dilations",
            "group",
            "has_bias",
            "pads",
            "strides",
        ],
    ),
    ("softmax", &["axis"]),
    ("reshape", &[]),
    ("broadcast", &[]),
    ("transpose", &["perm"]),
    ("slice", &["ends", "starts", "steps"]),
    ("concat", &["axis"]),
    ("gather", &["axis"]),
    ("gather_elements", &["axis"]),
    ("pad", &["pads", "value"]),
    ("layer_norm", &["axis", "epsilon", "has_bias"]),
    ("gelu", &["approximate"]),
    ("linear", &["activation", "has_bias", "has_residual"]),
    (
        "attention",
        &[
            "has_bias",
            "has_mask",
            "heads",
            "k_layout",
            "out_layout",
            "q_layout",
            "scale",
            "v_layout",
        ],
    ),
    (
        "linear_attention",
        &[
            "eps",
            "heads",
            "k_layout",
            "out_layout",
            "q_layout",
            "v_layout",
        ],
    ),
    ("quantize", &["axis"]),
    ("dequantize", &["axis"]),
    (
        "qlinear",
        &["has_bias", "x_scale", "x_type", "x_zero_point"],
    ),
];

fn lookup_op(name: &str) -> Option<Kind> {
    let base = name.strip_prefix("vit.")?;
    if let Some(&u) = UnaryOp::ALL.iter().find(|u| u.name() == base) {
        return Some(Kind::Unary(u));
    }
    if let Some(&b) = BinaryOp::ALL.iter().find(|b| b.name() == base) {
        return Some(Kind::Binary(b));
    }
    if let Some(&r) = ReduceOp::ALL.iter().find(|r| r.name() == base) {
        return Some(Kind::Reduce(r));
    }
    OTHER_OPS
        .iter()
        .find(|(n, _)| *n == base)
        .map(|(n, _)| Kind::Other(n))
}

fn allowed_attrs(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Unary(_) | Kind::Binary(_) => &[],
        Kind::Reduce(_) => &["axes", "keepdims"],
        Kind::Other(n) => OTHER_OPS
            .iter()
            .find(|(m, _)| *m == n)
            .map_or(&[], |(_, a)| *a),
    }
}

/// Build the op from its attributes; fields the printer leaves out come from the result type.
fn build_op(kind: Kind, a: &mut Attrs, result: &TensorType) -> R<Op> {
    Ok(match kind {
        Kind::Unary(u) => Op::Unary(u),
        Kind::Binary(b) => Op::Binary(b),
        Kind::Reduce(op) => Op::Reduce {
            op,
            axes: a.usizes("axes")?,
            keepdims: a.boolean("keepdims")?,
        },
        Kind::Other(n) => match n {
            "where" => Op::Where,
            "clip" => Op::Clip {
                min: a.opt_f32("min")?,
                max: a.opt_f32("max")?,
            },
            "cast" => Op::Cast { to: result.dtype },
            "matmul" => Op::MatMul,
            "conv" => Op::Conv {
                strides: a.usize_array("strides")?,
                pads: a.usize_array("pads")?,
                dilations: a.usize_array("dilations")?,
                group: a.usize("group")?,
                // Absent means no epilogue (the printer leaves `none` out).
                activation: a
                    .opt_choice("activation", &Activation::ALL, Activation::name)?
                    .unwrap_or(Activation::None),
                has_bias: a.flag("has_bias")?,
            },
            "softmax" => Op::Softmax {
                axis: a.usize("axis")?,
            },
            "reshape" => Op::Reshape {
                shape: result.shape.clone(),
            },
            "broadcast" => Op::Broadcast {
                shape: result.shape.clone(),
            },
            "transpose" => Op::Transpose {
                perm: a.usizes("perm")?,
            },
            "slice" => Op::Slice {
                starts: a.i64s("starts")?,
                ends: a.i64s("ends")?,
                steps: a.i64s("steps")?,
            },
            "concat" => Op::Concat {
                axis: a.usize("axis")?,
            },
            "gather" => Op::Gather {
                axis: a.usize("axis")?,
            },
            "gather_elements" => Op::GatherElements {
                axis: a.usize("axis")?,
            },
            "pad" => Op::Pad {
                pads: a.usizes("pads")?,
                value: a.f32("value")?,
            },
            "layer_norm" => Op::LayerNorm {
                axis: a.usize("axis")?,
                epsilon: a.f32("epsilon")?,
                has_bias: a.flag("has_bias")?,
            },
            "gelu" => Op::Gelu {
                approximate: a.boolean("approximate")?,
            },
            "linear" => Op::Linear {
                activation: a.choice("activation", &Activation::ALL, Activation::name)?,
                has_bias: a.flag("has_bias")?,
                has_residual: a.flag("has_residual")?,
            },
            "attention" => Op::Attention {
                heads: a.usize("heads")?,
                scale: a.f32("scale")?,
                q_layout: a.choice("q_layout", &AttnLayout::ALL, AttnLayout::name)?,
                k_layout: a.choice("k_layout", &AttnLayout::ALL, AttnLayout::name)?,
                v_layout: a.choice("v_layout", &AttnLayout::ALL, AttnLayout::name)?,
                out_layout: a.choice("out_layout", &AttnLayout::ALL, AttnLayout::name)?,
                has_bias: a.flag("has_bias")?,
                has_mask: a.flag("has_mask")?,
            },
            "linear_attention" => Op::LinearAttention {
                heads: a.usize("heads")?,
                eps: a.f32("eps")?,
                q_layout: a.choice("q_layout", &AttnLayout::ALL, AttnLayout::name)?,
                k_layout: a.choice("k_layout", &AttnLayout::ALL, AttnLayout::name)?,
                v_layout: a.choice("v_layout", &AttnLayout::ALL, AttnLayout::name)?,
                out_layout: a.choice("out_layout", &AttnLayout::ALL, AttnLayout::name)?,
            },
            "quantize" => Op::Quantize {
                axis: a.opt_usize("axis")?,
                to: result.dtype,
            },
            "dequantize" => Op::Dequantize {
                axis: a.opt_usize("axis")?,
            },
            "qlinear" => Op::QLinear {
                x_scale: a.f32("x_scale")?,
                x_zero_point: a.i32("x_zero_point")?,
                x_type: a.choice("x_type", &DType::ALL, DType::name)?,
                has_bias: a.flag("has_bias")?,
            },
            // Every name in OTHER_OPS has an arm above.
            other => return Err(err(a.op_pos, format!("unknown op `vit.{other}`"))),
        },
    })
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// Whether an op's operand count depends on `has_*` flags, for the arity message.
fn has_optional_operands(op: &Op) -> bool {
    matches!(
        op,
        Op::Conv { .. }
            | Op::LayerNorm { .. }
            | Op::Linear { .. }
            | Op::Attention { .. }
            | Op::QLinear { .. }
    )
}

// ---------------------------------------------------------------------------------------------
// Parser

/// One scalar of a `dense<…>` literal as written.
enum Lit {
    Num(String),
    Bool(bool),
}

struct Parser<'a> {
    lex: Lexer<'a>,
    peeked: Option<(Tok, Pos)>,
    constants: &'a Constants,
    m: Module,
    values: HashMap<String, ValueId>,
    /// Inline constants: node index and value. They are named once the whole text is read,
    /// so their names cannot collide with a `@handle` that appears later.
    inline: Vec<(usize, Tensor)>,
}

impl Parser<'_> {
    fn peek(&mut self) -> R<&(Tok, Pos)> {
        if self.peeked.is_none() {
            self.peeked = Some(self.lex.next()?);
        }
        Ok(self.peeked.as_ref().expect("just filled"))
    }

    fn peek_is(&mut self, t: &Tok) -> R<bool> {
        Ok(&self.peek()?.0 == t)
    }

    fn next(&mut self) -> R<(Tok, Pos)> {
        match self.peeked.take() {
            Some(t) => Ok(t),
            None => self.lex.next(),
        }
    }

    fn unexpected<T>(&self, tok: &Tok, pos: Pos, want: &str) -> R<T> {
        Err(err(
            pos,
            format!("expected {want}, found {}", tok.describe()),
        ))
    }

    fn expect(&mut self, t: Tok) -> R<Pos> {
        let (tok, pos) = self.next()?;
        if tok == t {
            Ok(pos)
        } else {
            self.unexpected(&tok, pos, &t.describe())
        }
    }

    fn punct(&mut self, c: char) -> R<Pos> {
        self.expect(Tok::Punct(c))
    }

    /// Consume `c` if it is next.
    fn eat(&mut self, c: char) -> R<bool> {
        if self.peek_is(&Tok::Punct(c))? {
            self.next()?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn ident(&mut self, want: &str) -> R<(String, Pos)> {
        match self.next()? {
            (Tok::Ident(s), pos) => Ok((s, pos)),
            (tok, pos) => self.unexpected(&tok, pos, want),
        }
    }

    fn value_name(&mut self, want: &str) -> R<(String, Pos)> {
        match self.next()? {
            (Tok::Value(s), pos) => Ok((s, pos)),
            (tok, pos) => self.unexpected(&tok, pos, want),
        }
    }

    /// A use of a value: it must be defined above.
    fn operand(&mut self) -> R<(ValueId, Pos)> {
        let (name, pos) = self.value_name("a value like `%0`")?;
        match self.values.get(&name) {
            Some(&v) => Ok((v, pos)),
            None => Err(err(pos, format!("undefined value `%{name}`"))),
        }
    }

    fn define(&mut self, name: &str, pos: Pos) -> R<()> {
        if self.values.contains_key(name) {
            return Err(err(pos, format!("value `%{name}` is defined twice")));
        }
        Ok(())
    }

    /// `tensor<d0xd1x…xdtype>` with static dims whose product fits [`checked_numel`].
    fn ty(&mut self) -> R<(TensorType, Pos)> {
        let (body, pos) = match self.next()? {
            (Tok::Type(b), pos) => (b, pos),
            (tok, pos) => {
                return self.unexpected(&tok, pos, "a tensor type like `tensor<2x3xf32>`")
            }
        };
        let mut parts: Vec<&str> = body.split('x').collect();
        let dt = parts.pop().unwrap_or("");
        let dtype = DType::from_name(dt).ok_or_else(|| {
            let names: Vec<&str> = DType::ALL.iter().map(|d| d.name()).collect();
            err(
                pos,
                format!(
                    "unknown element type `{dt}` in `tensor<{body}>` (expected one of {})",
                    names.join(", ")
                ),
            )
        })?;
        let mut shape = Vec::with_capacity(parts.len());
        for d in parts {
            let ok = !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
            match d.parse::<usize>() {
                Ok(n) if ok && n <= MAX_NUMEL => shape.push(n),
                _ if ok => {
                    return Err(err(
                        pos,
                        format!("dimension {d} of `tensor<{body}>` is larger than 2^40"),
                    ))
                }
                _ => {
                    return Err(err(
                        pos,
                        format!("malformed dimension `{d}` in `tensor<{body}>`"),
                    ))
                }
            }
        }
        if checked_numel(&shape).is_none() {
            return Err(err(
                pos,
                format!("`tensor<{body}>` has more than 2^40 elements"),
            ));
        }
        Ok((TensorType::new(shape, dtype), pos))
    }

    /// `{key = value, …}`; keys must be distinct.
    fn attr_dict(&mut self) -> R<Vec<Attr>> {
        self.punct('{')?;
        let mut items: Vec<Attr> = Vec::new();
        if self.eat('}')? {
            return Ok(items);
        }
        loop {
            let (key, pos) = self.ident("an attribute name")?;
            if items.iter().any(|a| a.key == key) {
                return Err(err(pos, format!("attribute `{key}` is given twice")));
            }
            self.punct('=')?;
            let val = match self.next()? {
                (Tok::Num(s), _) => AttrVal::Num(s),
                (Tok::Str(s), _) => AttrVal::Str(s),
                (Tok::Ident(s), _) if s == "true" => AttrVal::Bool(true),
                (Tok::Ident(s), _) if s == "false" => AttrVal::Bool(false),
                (Tok::Punct('['), _) => {
                    let mut xs = Vec::new();
                    if !self.eat(']')? {
                        loop {
                            match self.next()? {
                                (Tok::Num(s), p) => xs.push((s, p)),
                                (tok, p) => return self.unexpected(&tok, p, "a number"),
                            }
                            if !self.eat(',')? {
                                self.punct(']')?;
                                break;
                            }
                        }
                    }
                    AttrVal::List(xs)
                }
                (tok, p) => return self.unexpected(&tok, p, "an attribute value"),
            };
            items.push(Attr { key, val, pos });
            if !self.eat(',')? {
                self.punct('}')?;
                return Ok(items);
            }
        }
    }

    /// An optional `{vit.name = "…"}` on a function argument or result.
    fn io_name(&mut self) -> R<Option<String>> {
        if !self.peek_is(&Tok::Punct('{'))? {
            return Ok(None);
        }
        let mut name = None;
        for a in self.attr_dict()? {
            match (a.key.as_str(), a.val) {
                ("vit.name", AttrVal::Str(s)) => name = Some(s),
                ("vit.name", v) => {
                    return Err(err(
                        a.pos,
                        format!("`vit.name` must be a string, got {}", v.describe()),
                    ))
                }
                (k, _) => {
                    return Err(err(
                        a.pos,
                        format!("unknown attribute `{k}` (only `vit.name` is allowed here)"),
                    ))
                }
            }
        }
        Ok(name)
    }

    /// An optional `loc("name")`; the node name, empty when absent.
    fn loc(&mut self) -> R<String> {
        if !self.peek_is(&Tok::Ident("loc".into()))? {
            return Ok(String::new());
        }
        self.next()?;
        self.punct('(')?;
        let s = match self.next()? {
            (Tok::Str(s), _) => s,
            (tok, pos) => return self.unexpected(&tok, pos, "a quoted node name"),
        };
        self.punct(')')?;
        Ok(s)
    }

    fn module(&mut self) -> R<()> {
        self.expect(Tok::Ident("module".into()))?;
        if let (Tok::Symbol(_), _) = self.peek()? {
            if let (Tok::Symbol(s), _) = self.next()? {
                self.m.name = s;
            }
        }
        self.punct('{')?;
        self.expect(Tok::Ident("func.func".into()))?;
        match self.next()? {
            (Tok::Symbol(s), _) if s == "main" => {}
            (tok, pos) => return self.unexpected(&tok, pos, "`@main`"),
        }

        self.punct('(')?;
        if !self.eat(')')? {
            loop {
                let (name, pos) = self.value_name("an argument like `%arg0`")?;
                self.define(&name, pos)?;
                self.punct(':')?;
                let (ty, _) = self.ty()?;
                let input_name = self.io_name()?.unwrap_or_else(|| name.clone());
                let index = self.m.inputs.len();
                let id = self.m.push(Node {
                    op: Op::Input { index },
                    inputs: vec![],
                    ty,
                    name: input_name.clone(),
                });
                self.m.inputs.push((input_name, id));
                self.values.insert(name, id);
                if !self.eat(',')? {
                    self.punct(')')?;
                    break;
                }
            }
        }

        // Results: `-> T`, or `-> (T {vit.name = …}, …)`; only the parenthesised form takes
        // names, since a bare `T {` would be ambiguous with the body.
        self.expect(Tok::Arrow)?;
        let mut results: Vec<(TensorType, Option<String>)> = Vec::new();
        if self.eat('(')? {
            if !self.eat(')')? {
                loop {
                    let (ty, _) = self.ty()?;
                    results.push((ty, self.io_name()?));
                    if !self.eat(',')? {
                        self.punct(')')?;
                        break;
                    }
                }
            }
        } else {
            results.push((self.ty()?.0, None));
        }

        self.punct('{')?;
        loop {
            match self.peek()? {
                (Tok::Value(_), _) => self.statement()?,
                (Tok::Ident(s), _) if s == "return" => {
                    self.ret(&results)?;
                    break;
                }
                (tok, pos) => {
                    let (tok, pos) = (tok.clone(), *pos);
                    return self.unexpected(&tok, pos, "an op (`%name = …`) or `return`");
                }
            }
        }
        self.punct('}')?;
        self.punct('}')?;
        self.expect(Tok::Eof)?;

        for (idx, t) in std::mem::take(&mut self.inline) {
            let key = self.unique_constant_name();
            self.m.constants.insert(key.clone(), Arc::new(t));
            self.m.nodes[idx].op = Op::Constant { name: key };
        }
        Ok(())
    }

    fn unique_constant_name(&self) -> String {
        let base = INLINE_CONSTANT_NAME;
        if !self.m.constants.contains_key(base) {
            return base.to_string();
        }
        (1..)
            .map(|i| format!("{base}.{i}"))
            .find(|n| !self.m.constants.contains_key(n))
            .unwrap_or_default()
    }

    fn ret(&mut self, results: &[(TensorType, Option<String>)]) -> R<()> {
        let (_, rpos) = self.next()?;
        let mut vals: Vec<(ValueId, Pos, String)> = Vec::new();
        if let (Tok::Value(_), _) = self.peek()? {
            loop {
                let (name, pos) = self.value_name("a value")?;
                let v = *self
                    .values
                    .get(&name)
                    .ok_or_else(|| err(pos, format!("undefined value `%{name}`")))?;
                vals.push((v, pos, name));
                if !self.eat(',')? {
                    break;
                }
            }
            self.punct(':')?;
            let mut tys = vec![self.ty()?];
            while self.eat(',')? {
                tys.push(self.ty()?);
            }
            if tys.len() != vals.len() {
                return Err(err(
                    tys[0].1,
                    format!(
                        "`return` lists {} but {}",
                        plural(vals.len(), "value"),
                        plural(tys.len(), "type")
                    ),
                ));
            }
            for ((v, _, name), (ty, tpos)) in vals.iter().zip(&tys) {
                if self.m.ty(*v) != ty {
                    return Err(err(
                        *tpos,
                        format!(
                            "`%{name}` has type {}, but `return` says {ty}",
                            self.m.ty(*v)
                        ),
                    ));
                }
            }
        }
        if vals.len() != results.len() {
            return Err(err(
                rpos,
                format!(
                    "`return` has {}, but @main declares {}",
                    plural(vals.len(), "value"),
                    plural(results.len(), "result")
                ),
            ));
        }
        for (i, ((v, pos, name), (ty, out_name))) in vals.into_iter().zip(results).enumerate() {
            if self.m.ty(v) != ty {
                return Err(err(
                    pos,
                    format!(
                        "`%{name}` has type {}, but @main declares result {i} as {ty}",
                        self.m.ty(v)
                    ),
                ));
            }
            self.m.outputs.push((out_name.clone().unwrap_or(name), v));
        }
        Ok(())
    }

    fn statement(&mut self) -> R<()> {
        let (name, npos) = self.value_name("a value name")?;
        self.define(&name, npos)?;
        self.punct('=')?;
        let (opname, opos) = self.ident("an op name like `vit.add`")?;
        if opname == "vit.constant" {
            return self.constant(name);
        }
        if opname == "vit.input" {
            return Err(err(
                opos,
                "`vit.input` cannot appear in the body: graph inputs are the arguments of @main",
            ));
        }
        let kind = lookup_op(&opname).ok_or_else(|| err(opos, format!("unknown op `{opname}`")))?;

        let mut operands: Vec<(ValueId, Pos)> = Vec::new();
        if let (Tok::Value(_), _) = self.peek()? {
            loop {
                operands.push(self.operand()?);
                if !self.eat(',')? {
                    break;
                }
            }
        }
        let items = if self.peek_is(&Tok::Punct('{'))? {
            self.attr_dict()?
        } else {
            Vec::new()
        };
        let allowed = allowed_attrs(kind);
        if let Some(a) = items.iter().find(|a| !allowed.contains(&a.key.as_str())) {
            return Err(err(
                a.pos,
                format!("unknown attribute `{}` for `{opname}`", a.key),
            ));
        }

        let sig_pos = self.punct(':')?;
        self.punct('(')?;
        let mut sig: Vec<(TensorType, Pos)> = Vec::new();
        if !self.eat(')')? {
            loop {
                sig.push(self.ty()?);
                if !self.eat(',')? {
                    self.punct(')')?;
                    break;
                }
            }
        }
        self.expect(Tok::Arrow)?;
        let (result, rpos) = self.ty()?;
        let loc = self.loc()?;

        let mut attrs = Attrs {
            items,
            op: opname.clone(),
            op_pos: opos,
        };
        let op = build_op(kind, &mut attrs, &result)?;
        match op.arity() {
            Some(n) if n != operands.len() => {
                let hint = if has_optional_operands(&op) {
                    " with these attributes (has_* flags add optional operands)"
                } else {
                    ""
                };
                return Err(err(
                    opos,
                    format!(
                        "`{opname}` takes {}{hint}, got {}",
                        plural(n, "operand"),
                        operands.len()
                    ),
                ));
            }
            None if operands.is_empty() => {
                return Err(err(opos, format!("`{opname}` takes at least one operand")));
            }
            _ => {}
        }
        if sig.len() != operands.len() {
            return Err(err(
                sig_pos,
                format!(
                    "the signature lists {} operand types for {} operands",
                    sig.len(),
                    operands.len()
                ),
            ));
        }
        for (i, ((v, _), (ty, tpos))) in operands.iter().zip(&sig).enumerate() {
            if self.m.ty(*v) != ty {
                return Err(err(
                    *tpos,
                    format!(
                        "operand {i} has type {}, but the signature says {ty}",
                        self.m.ty(*v)
                    ),
                ));
            }
        }
        let tys: Vec<&TensorType> = operands.iter().map(|(v, _)| self.m.ty(*v)).collect();
        let inferred =
            infer_type(&op, &tys).map_err(|msg| err(opos, format!("`{opname}`: {msg}")))?;
        if inferred != result {
            return Err(err(
                rpos,
                format!("`{opname}` gives {inferred}, but the result type is written as {result}"),
            ));
        }
        let id = self.m.push(Node {
            op,
            inputs: operands.into_iter().map(|(v, _)| v).collect(),
            ty: result,
            name: loc,
        });
        self.values.insert(name, id);
        Ok(())
    }

    /// `vit.constant @handle : T` or `vit.constant dense<…> : T`.
    fn constant(&mut self, name: String) -> R<()> {
        match self.next()? {
            (Tok::Symbol(handle), _) => {
                self.punct(':')?;
                let (ty, tpos) = self.ty()?;
                let loc = self.loc()?;
                let t = self
                    .constants
                    .get(&handle)
                    .ok_or_else(|| IrError::MissingConstant(handle.clone()))?;
                if t.ty() != ty {
                    return Err(err(
                        tpos,
                        format!("constant @{handle} is {}, but the text says {ty}", t.ty()),
                    ));
                }
                self.m.constants.insert(handle.clone(), Arc::clone(t));
                let id = self.m.push(Node {
                    op: Op::Constant { name: handle },
                    inputs: vec![],
                    ty,
                    name: loc,
                });
                self.values.insert(name, id);
            }
            (Tok::Ident(d), dpos) if d == "dense" => {
                self.punct('<')?;
                let mut lits: Vec<(Lit, Pos)> = Vec::new();
                let splat = !self.eat('[')?;
                if splat {
                    lits.push(self.literal()?);
                } else if !self.eat(']')? {
                    loop {
                        lits.push(self.literal()?);
                        if !self.eat(',')? {
                            self.punct(']')?;
                            break;
                        }
                    }
                }
                self.punct('>')?;
                self.punct(':')?;
                let (ty, _) = self.ty()?;
                let loc = self.loc()?;
                let n = ty.numel();
                if splat && n > INLINE_LIMIT {
                    return Err(err(
                        dpos,
                        format!(
                            "a splat `dense<x>` may fill at most {INLINE_LIMIT} elements, {ty} \
                             has {n}; larger constants are `@name` handles"
                        ),
                    ));
                }
                if !splat && lits.len() != n {
                    return Err(err(
                        dpos,
                        format!(
                            "dense<…> has {} values, but {ty} has {n} elements",
                            lits.len()
                        ),
                    ));
                }
                let data = literal_data(ty.dtype, &lits, n)?;
                let id = self.m.push(Node {
                    op: Op::Constant {
                        name: String::new(),
                    },
                    inputs: vec![],
                    ty: ty.clone(),
                    name: loc,
                });
                self.inline.push((
                    id.0,
                    Tensor {
                        shape: ty.shape,
                        data,
                    },
                ));
                self.values.insert(name, id);
            }
            (tok, pos) => {
                return self.unexpected(&tok, pos, "`@name` or `dense<…>` after `vit.constant`")
            }
        }
        Ok(())
    }

    fn literal(&mut self) -> R<(Lit, Pos)> {
        match self.next()? {
            (Tok::Num(s), p) => Ok((Lit::Num(s), p)),
            (Tok::Ident(s), p) if s == "true" => Ok((Lit::Bool(true), p)),
            (Tok::Ident(s), p) if s == "false" => Ok((Lit::Bool(false), p)),
            (tok, p) => self.unexpected(&tok, p, "a number, `true` or `false`"),
        }
    }
}

/// The elements of a `dense<…>` literal as `dtype`; `lits` holds `n` values or one splat.
/// Half-precision values are read through f64 so each rounds once; hex gives the bit pattern
/// of the element type itself.
fn literal_data(dtype: DType, lits: &[(Lit, Pos)], n: usize) -> R<Data> {
    let bad = |pos: Pos, what: &Lit| {
        let shown = match what {
            Lit::Num(s) => s.clone(),
            Lit::Bool(b) => b.to_string(),
        };
        err(pos, format!("`{shown}` is not a valid {dtype} value"))
    };
    let text = |l: &(Lit, Pos)| -> R<String> {
        match &l.0 {
            Lit::Num(s) => Ok(s.clone()),
            b => Err(bad(l.1, b)),
        }
    };
    let int = |l: &(Lit, Pos), lo: i64, hi: i64| -> R<i64> {
        let s = text(l)?;
        s.parse::<i64>()
            .ok()
            .filter(|x| (lo..=hi).contains(x))
            .ok_or_else(|| bad(l.1, &l.0))
    };
    let mut vals = Vec::with_capacity(lits.len());
    let data = match dtype {
        DType::F32 => {
            for l in lits {
                let s = text(l)?;
                vals.push(parse_f32(&s).ok_or_else(|| bad(l.1, &l.0))?);
            }
            Data::F32(vals)
        }
        DType::F16 => {
            let mut v = Vec::with_capacity(lits.len());
            for l in lits {
                // Hex is the f16's own bits; keep them exactly (NaN payloads included).
                let s = text(l)?;
                v.push(match s.strip_prefix("0x") {
                    Some(h) => {
                        f16::from_bits(u16::from_str_radix(h, 16).map_err(|_| bad(l.1, &l.0))?)
                    }
                    None => f16::from_f64(s.parse::<f64>().map_err(|_| bad(l.1, &l.0))?),
                });
            }
            Data::F16(v)
        }
        DType::BF16 => {
            let mut v = Vec::with_capacity(lits.len());
            for l in lits {
                let s = text(l)?;
                v.push(match s.strip_prefix("0x") {
                    Some(h) => {
                        bf16::from_bits(u16::from_str_radix(h, 16).map_err(|_| bad(l.1, &l.0))?)
                    }
                    None => bf16::from_f64(s.parse::<f64>().map_err(|_| bad(l.1, &l.0))?),
                });
            }
            Data::BF16(v)
        }
        DType::I8 => Data::I8(
            lits.iter()
                .map(|l| int(l, i8::MIN as i64, i8::MAX as i64).map(|x| x as i8))
                .collect::<R<_>>()?,
        ),
        DType::U8 => Data::U8(
            lits.iter()
                .map(|l| int(l, 0, u8::MAX as i64).map(|x| x as u8))
                .collect::<R<_>>()?,
        ),
        DType::I32 => Data::I32(
            lits.iter()
                .map(|l| int(l, i32::MIN as i64, i32::MAX as i64).map(|x| x as i32))
                .collect::<R<_>>()?,
        ),
        DType::I64 => Data::I64(
            lits.iter()
                .map(|l| int(l, i64::MIN, i64::MAX))
                .collect::<R<_>>()?,
        ),
        DType::Bool => Data::Bool(
            lits.iter()
                .map(|l| match l.0 {
                    Lit::Bool(b) => Ok(b),
                    _ => Err(bad(l.1, &l.0)),
                })
                .collect::<R<_>>()?,
        ),
    };
    if lits.len() == 1 && n != 1 {
        // A splat: repeat the one value (n is at most INLINE_LIMIT here).
        let one = data;
        return Ok(match one {
            Data::F32(v) => Data::F32(vec![v[0]; n]),
            Data::F16(v) => Data::F16(vec![v[0]; n]),
            Data::BF16(v) => Data::BF16(vec![v[0]; n]),
            Data::I8(v) => Data::I8(vec![v[0]; n]),
            Data::U8(v) => Data::U8(vec![v[0]; n]),
            Data::I32(v) => Data::I32(vec![v[0]; n]),
            Data::I64(v) => Data::I64(vec![v[0]; n]),
            Data::Bool(v) => Data::Bool(vec![v[0]; n]),
        });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::print::print_module;

    fn f32s(n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|i| i as f32 * scale - 1.0).collect()
    }

    /// A hand-written module that touches every part of the grammar.
    const SAMPLE: &str = r#"// leading comment
module @sample {
  func.func @main(%x: tensor<1x4x8xf32> {vit.name = "pixel_values"}, %i: tensor<2xi64>) -> (tensor<1x4x16xf32> {vit.name = "out"}, tensor<1x4x2xf32>) {
    %w = vit.constant @"blocks.0.fc.weight" : tensor<8x16xf32> loc("w")
    %b = vit.constant dense<[0.5, -1.0, 0x7FC00000, 1e-6, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]> : tensor<16xf32>
    %y = vit.linear %x, %w, %b {activation = "gelu", has_bias = true} : (tensor<1x4x8xf32>, tensor<8x16xf32>, tensor<16xf32>) -> tensor<1x4x16xf32> loc("/fc \"1\"\0A")
    %g = vit.gather %x, %i {axis = 2} : (tensor<1x4x8xf32>, tensor<2xi64>) -> tensor<1x4x2xf32> // trailing comment
    return %y, %g : tensor<1x4x16xf32>, tensor<1x4x2xf32>
  }
}
"#;

    fn sample_constants() -> Constants {
        let mut c = Constants::new();
        c.insert(
            "blocks.0.fc.weight".into(),
            Arc::new(Tensor::f32([8, 16], f32s(128, 0.01))),
        );
        c
    }

    #[test]
    fn sample_parses_and_round_trips() {
        let c = sample_constants();
        let m = parse_module(SAMPLE, &c).expect("sample parses");
        assert_eq!(m.inputs[0].0, "pixel_values");
        assert_eq!(m.inputs[1].0, "i", "an unnamed argument takes its SSA name");
        assert_eq!(
            m.outputs[1].0, "g",
            "an unnamed result takes the returned value's name"
        );
        assert_eq!(m.nodes[4].name, "/fc \"1\"\n");
        let text = print_module(&m);
        let again = parse_module(&text, &c).expect("printed form parses");
        assert_eq!(print_module(&again), text);
    }

    #[test]
    fn truncated_prefixes_are_errors() {
        let c = sample_constants();
        for (i, _) in SAMPLE.char_indices() {
            let prefix = &SAMPLE[..i];
            if prefix.trim_end() != SAMPLE.trim_end() {
                assert!(parse_module(prefix, &c).is_err(), "prefix {i} parsed");
            }
        }
        let printed = print_module(&parse_module(SAMPLE, &c).expect("sample parses"));
        for (i, _) in printed.char_indices() {
            let prefix = &printed[..i];
            if prefix.trim_end() != printed.trim_end() {
                assert!(
                    parse_module(prefix, &c).is_err(),
                    "printed prefix {i} parsed"
                );
            }
        }
    }

    /// A small xorshift generator, so the fuzz inputs are the same on every run.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn garbage_never_panics() {
        let c = sample_constants();
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        // Random bytes.
        for _ in 0..500 {
            let n = rng.below(200);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            let _ = parse_module(&String::from_utf8_lossy(&bytes), &c);
        }
        // Token soup: plausible pieces in random order, which gets much deeper into the parser.
        let pieces = [
            "module",
            "@m",
            "{",
            "}",
            "func.func",
            "@main",
            "(",
            ")",
            "%x",
            "%0",
            ":",
            ",",
            "->",
            "=",
            "tensor<2xf32>",
            "tensor<0x99999999999xf32>",
            "tensor<",
            "vit.add",
            "vit.conv",
            "vit.constant",
            "dense",
            "<",
            ">",
            "[",
            "]",
            "1.5",
            "-7",
            "0x7FC00000",
            "true",
            "\"s\\22\"",
            "loc",
            "return",
            "{vit.name = \"a\"}",
            "axis",
            "has_bias",
            "// c\n",
            "\n",
            "\"unterminated",
            "@\"q\"",
            "99999999999999999999999",
        ];
        for _ in 0..3000 {
            let n = rng.below(60);
            let text: Vec<&str> = (0..n).map(|_| pieces[rng.below(pieces.len())]).collect();
            let _ = parse_module(&text.join(" "), &c);
        }
        // Mutations of a valid module: drop, duplicate or replace one character.
        let chars: Vec<char> = SAMPLE.chars().collect();
        for _ in 0..3000 {
            let mut t = chars.clone();
            let i = rng.below(t.len());
            match rng.below(3) {
                0 => {
                    t.remove(i);
                }
                1 => t.insert(i, t[i]),
                _ => t[i] = char::from(b" %@{}()[]<>,:=x0-.\"\\a9"[rng.below(22)]),
            }
            let _ = parse_module(&t.iter().collect::<String>(), &c);
        }
    }

    #[test]
    fn hostile_shapes_and_attributes_are_errors() {
        let c = Constants::new();
        let cases = [
            // Kernel of size 0 (inference would compute 0 - 1).
            "module { func.func @main(%x: tensor<1x1x4x4xf32>, %w: tensor<1x1x0x1xf32>) -> tensor<1x1x4x4xf32> {
               %y = vit.conv %x, %w {dilations = [1, 1], group = 1, pads = [0, 0, 0, 0], strides = [1, 1]} : (tensor<1x1x4x4xf32>, tensor<1x1x0x1xf32>) -> tensor<1x1x4x4xf32>
               return %y : tensor<1x1x4x4xf32> } }",
            // Channels times group overflows.
            "module { func.func @main(%x: tensor<0x1x4x4xf32>, %w: tensor<1x1099511627776x1x1xf32>) -> tensor<0x1x4x4xf32> {
               %y = vit.conv %x, %w {dilations = [1, 1], group = 1099511627776, pads = [0, 0, 0, 0], strides = [1, 1]} : (tensor<0x1x4x4xf32>, tensor<1x1099511627776x1x1xf32>) -> tensor<0x1x4x4xf32>
               return %y : tensor<0x1x4x4xf32> } }",
            // Dilation times kernel overflows.
            "module { func.func @main(%x: tensor<1x1x4x4xf32>, %w: tensor<0x1x1099511627776x1xf32>) -> tensor<1x0x4x4xf32> {
               %y = vit.conv %x, %w {dilations = [1099511627776, 1], group = 1, pads = [0, 0, 0, 0], strides = [1, 1]} : (tensor<1x1x4x4xf32>, tensor<0x1x1099511627776x1xf32>) -> tensor<1x0x4x4xf32>
               return %y : tensor<1x0x4x4xf32> } }",
            // Heads times head dim overflows on an empty tensor.
            "module { func.func @main(%q: tensor<0x1099511627776x1x1099511627776xf32>) -> tensor<0x1x1099511627776xf32> {
               %y = vit.attention %q, %q, %q {heads = 1099511627776, k_layout = \"bhsd\", out_layout = \"bsd\", q_layout = \"bhsd\", scale = 1.0, v_layout = \"bhsd\"} : (tensor<0x1099511627776x1x1099511627776xf32>, tensor<0x1099511627776x1x1099511627776xf32>, tensor<0x1099511627776x1x1099511627776xf32>) -> tensor<0x1x1099511627776xf32>
               return %y : tensor<0x1x1099511627776xf32> } }",
            // Concatenated size passes 2^40.
            "module { func.func @main(%x: tensor<0x1099511627776xf32>) -> tensor<0x1xf32> {
               %y = vit.concat %x, %x {axis = 1} : (tensor<0x1099511627776xf32>, tensor<0x1099511627776xf32>) -> tensor<0x1xf32>
               return %y : tensor<0x1xf32> } }",
            // A dimension over 2^40 hidden behind a zero.
            "module { func.func @main(%x: tensor<0x99999999999999xf32>) -> tensor<0x99999999999999xf32> {
               return %x : tensor<0x99999999999999xf32> } }",
            // A splat that would fill a huge tensor.
            "module { func.func @main(%x: tensor<2xf32>) -> tensor<2xf32> {
               %c = vit.constant dense<1.0> : tensor<1099511627776xf32>
               return %x : tensor<2xf32> } }",
        ];
        for text in cases {
            match parse_module(text, &c) {
                Err(IrError::Parse { .. }) => {}
                other => panic!("expected a parse error, got {other:?} for\n{text}"),
            }
        }
    }

    #[test]
    fn constant_handles() {
        let text = "module { func.func @main() -> tensor<20xf32> {
            %a = vit.constant dense<[1.0, 2.0]> : tensor<2xf32>
            %w = vit.constant @cst : tensor<20xf32>
            return %w : tensor<20xf32> } }";
        assert!(matches!(
            parse_module(text, &Constants::new()),
            Err(IrError::MissingConstant(n)) if n == "cst"
        ));
        let mut c = Constants::new();
        c.insert("cst".into(), Arc::new(Tensor::f32([20], f32s(20, 1.0))));
        let m = parse_module(text, &c).expect("parses with the constant");
        // The inline constant is named after the handles, so it does not take `cst`.
        assert_eq!(m.constants.keys().collect::<Vec<_>>(), vec!["cst", "cst.1"]);
        assert_eq!(m.constants["cst.1"].as_f32(), Some(&[1.0, 2.0][..]));
        c.insert("cst".into(), Arc::new(Tensor::f32([2, 10], f32s(20, 1.0))));
        let e = parse_module(text, &c).expect_err("type differs");
        assert!(e.to_string().contains("tensor<2x10xf32>"), "{e}");
    }

    /// A module with every op, enum value and optional operand, built through the builder.
    fn every_op() -> Module {
        let f = |s: &[usize]| TensorType::new(s.to_vec(), DType::F32);
        let mut m = Module::new("every op");
        let x = m.add_input("x", f(&[1, 4, 8]));
        let idx = m.add_input("idx", TensorType::new(vec![3], DType::I64));
        let q4 = m.add_input("q4", f(&[1, 2, 4, 4]));
        let s4 = m.add_input("s4", f(&[1, 4, 2, 4]));
        let mask = m.add_input("mask", TensorType::new(vec![4], DType::Bool));
        let big = m.add_constant("blocks.0.weight", Tensor::f32([8, 8], f32s(64, 0.5)));
        let odd = m.add_constant("odd \"name\"\n", Tensor::f32([17], f32s(17, 0.25)));
        let small = m.add_constant("cst", Tensor::f32([8], f32s(8, 0.125)));
        let add = |m: &mut Module, op: Op, ins: Vec<ValueId>| {
            let name = op.name();
            m.add(op, ins, "").unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        let gt = add(&mut m, Op::Binary(BinaryOp::Greater), vec![x, small]);
        for u in UnaryOp::ALL {
            let a = if u == UnaryOp::Not { gt } else { x };
            add(&mut m, Op::Unary(u), vec![a]);
        }
        for b in BinaryOp::ALL {
            let ins = match b {
                BinaryOp::And | BinaryOp::Or => vec![gt, gt],
                BinaryOp::Mod => vec![idx, idx],
                _ => vec![x, small],
            };
            add(&mut m, Op::Binary(b), ins);
        }
        add(&mut m, Op::Where, vec![gt, x, small]);
        for (min, max) in [
            (Some(0.0), None),
            (None, Some(6.0)),
            (Some(f32::NEG_INFINITY), Some(f32::INFINITY)),
            (None, None),
        ] {
            add(&mut m, Op::Clip { min, max }, vec![x]);
        }
        for to in DType::ALL {
            add(&mut m, Op::Cast { to }, vec![x]);
        }
        add(&mut m, Op::MatMul, vec![x, big]);
        let img = add(
            &mut m,
            Op::Reshape {
                shape: vec![1, 2, 4, 4],
            },
            vec![x],
        );
        let cw = m.add_constant("conv.w", Tensor::f32([2, 1, 3, 3], f32s(18, 0.1)));
        let cb = m.add_constant("conv.b", Tensor::f32([2], vec![0.5, -0.5]));
        for activation in Activation::ALL {
            add(
                &mut m,
                Op::Conv {
                    strides: [1, 2],
                    pads: [1, 0, 1, 2],
                    dilations: [1, 1],
                    group: 2,
                    activation,
                    has_bias: true,
                },
                vec![img, cw, cb],
            );
        }
        for op in ReduceOp::ALL {
            for keepdims in [false, true] {
                let r = Op::Reduce {
                    op,
                    axes: vec![0, 2],
                    keepdims,
                };
                add(&mut m, r, vec![x]);
            }
        }
        add(&mut m, Op::Softmax { axis: 2 }, vec![x]);
        add(
            &mut m,
            Op::Broadcast {
                shape: vec![2, 1, 4, 8],
            },
            vec![x],
        );
        add(
            &mut m,
            Op::Transpose {
                perm: vec![2, 0, 1],
            },
            vec![x],
        );
        let sl = Op::Slice {
            starts: vec![0, 3, 1],
            ends: vec![1, -1, 8],
            steps: vec![1, -2, 3],
        };
        add(&mut m, sl, vec![x]);
        add(&mut m, Op::Concat { axis: 1 }, vec![x, x, x]);
        add(&mut m, Op::Gather { axis: 2 }, vec![x, idx]);
        let rows = Tensor::new(
            vec![1, 2, 8],
            Data::I64((0..16).map(|v| v % 4 - 2).collect()),
        );
        let rows = m.add_constant("rows", rows);
        add(&mut m, Op::GatherElements { axis: 1 }, vec![x, rows]);
        let pad = Op::Pad {
            pads: vec![0, 1, 2, 0, 0, 1],
            value: f32::NAN,
        };
        add(&mut m, pad, vec![x]);
        for has_bias in [false, true] {
            let mut ins = vec![x, small];
            if has_bias {
                ins.push(small);
            }
            let ln = Op::LayerNorm {
                axis: 2,
                epsilon: 1e-12,
                has_bias,
            };
            add(&mut m, ln, ins);
        }
        for approximate in [false, true] {
            add(&mut m, Op::Gelu { approximate }, vec![x]);
        }
        for (i, activation) in Activation::ALL.into_iter().enumerate() {
            let (has_bias, has_residual) = (i % 2 == 1, i / 2 % 2 == 1);
            let mut ins = vec![x, big];
            if has_bias {
                ins.push(small);
            }
            if has_residual {
                ins.push(x);
            }
            let l = Op::Linear {
                activation,
                has_bias,
                has_residual,
            };
            add(&mut m, l, ins);
        }
        let bias = m.add_constant("attn.bias", Tensor::f32([4, 4], f32s(16, 0.01)));
        let by_layout = |l: AttnLayout| match l {
            AttnLayout::Bsd => x,
            AttnLayout::Bhsd | AttnLayout::Bhds => q4,
            AttnLayout::Bshd => s4,
        };
        for (i, out_layout) in AttnLayout::ALL.into_iter().enumerate() {
            let l = |k: usize| AttnLayout::ALL[(i + k) % 4];
            let (has_bias, has_mask) = (i % 2 == 1, i >= 2);
            let mut ins = vec![by_layout(l(0)), by_layout(l(1)), by_layout(l(2))];
            if has_bias {
                ins.push(bias);
            }
            if has_mask {
                ins.push(mask);
            }
            let a = Op::Attention {
                heads: 2,
                scale: 0.353_553_38,
                q_layout: l(0),
                k_layout: l(1),
                v_layout: l(2),
                out_layout,
                has_bias,
                has_mask,
            };
            add(&mut m, a, ins);
        }
        let sc = m.add_constant("q.scale", Tensor::scalar_f32(0.05));
        let z8 = m.add_constant("q.zp", Tensor::new(vec![], Data::I8(vec![-3])));
        let q = add(
            &mut m,
            Op::Quantize {
                axis: None,
                to: DType::I8,
            },
            vec![x, sc, z8],
        );
        add(&mut m, Op::Dequantize { axis: None }, vec![q, sc, z8]);
        let sa = m.add_constant("q.scale", Tensor::f32([4], vec![0.5, 0.25, 0.125, 1.0]));
        let za = m.add_constant("q.zp", Tensor::new(vec![4], Data::U8(vec![0, 128, 255, 7])));
        let qa = Op::Quantize {
            axis: Some(1),
            to: DType::U8,
        };
        let q = add(&mut m, qa, vec![x, sa, za]);
        add(&mut m, Op::Dequantize { axis: Some(1) }, vec![q, sa, za]);
        let w = m.add_constant("ql.w", Tensor::new(vec![8, 3], Data::I8((0..24).collect())));
        let ws = m.add_constant("ql.ws", Tensor::f32([3], vec![0.1, 0.2, 0.3]));
        let wz = m.add_constant("ql.wz", Tensor::new(vec![3], Data::I8(vec![0, -1, 1])));
        let qb = m.add_constant("ql.b", Tensor::f32([3], vec![1.0, 2.0, 3.0]));
        for (x_type, has_bias) in [(DType::I8, true), (DType::U8, false)] {
            let mut ins = vec![x, w, ws, wz];
            if has_bias {
                ins.push(qb);
            }
            let ql = Op::QLinear {
                x_scale: 0.02,
                x_zero_point: if x_type == DType::I8 { -5 } else { 128 },
                x_type,
                has_bias,
            };
            add(&mut m, ql, ins);
        }
        let last = add(&mut m, Op::Unary(UnaryOp::Relu), vec![odd]);
        m.outputs.push(("relu out".into(), last));
        m.outputs.push(("x again".into(), x));
        crate::verify::verify(&m).expect("built module verifies");
        m
    }

    #[test]
    fn every_op_round_trips() {
        let m = every_op();
        let text = print_module(&m);
        let p = parse_module(&text, &m.constants).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(print_module(&p), text);
        // Beyond the text: the parsed module has the same ops, operands, types, names and
        // constant data (inline constants get new keys, so compare through them).
        assert_eq!(p.nodes.len(), m.nodes.len());
        assert_eq!(p.inputs, m.inputs);
        assert_eq!(p.outputs, m.outputs);
        for (a, b) in m.nodes.iter().zip(&p.nodes) {
            assert_eq!((&a.inputs, &a.ty, &a.name), (&b.inputs, &b.ty, &b.name));
            match (&a.op, &b.op) {
                (Op::Constant { name: na }, Op::Constant { name: nb }) => {
                    let (ta, tb) = (&m.constants[na], &p.constants[nb]);
                    assert_eq!(ta.ty(), tb.ty());
                    assert_eq!(ta.data.to_le_bytes(), tb.data.to_le_bytes());
                }
                // Debug, because a NaN field is not equal to itself.
                (oa, ob) => assert_eq!(format!("{oa:?}"), format!("{ob:?}")),
            }
        }
    }

    #[test]
    fn printed_form_is_the_documented_one() {
        let mut m = Module::new("digits_vit");
        let x = m.add_input(
            "pixel_values",
            TensorType::new(vec![1, 1, 8, 8], DType::F32),
        );
        let w = m.add_constant("patch.weight", Tensor::f32([4, 1, 4, 4], f32s(64, 0.5)));
        let b = m.add_constant("", Tensor::f32([4], vec![1.5, -2.0, f32::NAN, 1e-6]));
        m.nodes[b.0].name.clear();
        let conv = Op::Conv {
            strides: [4, 4],
            pads: [0, 0, 0, 0],
            dilations: [1, 1],
            group: 1,
            activation: Activation::None,
            has_bias: true,
        };
        let c = m
            .add(conv, vec![x, w, b], "/patch_embed/proj/Conv")
            .expect("conv");
        let r = m
            .add(
                Op::Reshape {
                    shape: vec![1, 4, 4],
                },
                vec![c],
                "",
            )
            .expect("reshape");
        m.outputs.push(("logits".into(), r));
        let want = r#"module @digits_vit {
  func.func @main(%arg0: tensor<1x1x8x8xf32> {vit.name = "pixel_values"}) -> (tensor<1x4x4xf32> {vit.name = "logits"}) {
    %0 = vit.constant @patch.weight : tensor<4x1x4x4xf32> loc("patch.weight")
    %1 = vit.constant dense<[1.5, -2.0, 0x7FC00000, 1e-6]> : tensor<4xf32>
    %2 = vit.conv %arg0, %0, %1 {dilations = [1, 1], group = 1, has_bias = true, pads = [0, 0, 0, 0], strides = [4, 4]} : (tensor<1x1x8x8xf32>, tensor<4x1x4x4xf32>, tensor<4xf32>) -> tensor<1x4x2x2xf32> loc("/patch_embed/proj/Conv")
    %3 = vit.reshape %2 : (tensor<1x4x2x2xf32>) -> tensor<1x4x4xf32>
    return %3 : tensor<1x4x4xf32>
  }
}
"#;
        assert_eq!(print_module(&m), want);
    }
}
