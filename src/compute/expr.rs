//! Band-math expressions (DESIGN §4b `compute`): a small recursive-descent
//! parser of our own into a typed tree. No `eval`, no scripting engine.
//!
//! Grammar, loosest first (as Python's):
//!
//! ```text
//! or    := and ("or" and)*
//! and   := not ("and" not)*
//! not   := "not" not | cmp
//! cmp   := sum (("<" | "<=" | ">" | ">=" | "==" | "!=") sum)?
//! sum   := term (("+" | "-") term)*
//! term  := unary (("*" | "/") unary)*
//! unary := ("-" | "+") unary | power
//! power := atom ("**" unary)?
//! atom  := number | band | function "(" or ("," or)* ")" | "(" or ")"
//! ```

use crate::error::{Error, Result};

/// Longest expression, in bytes.
pub const MAX_CHARS: usize = 1000;
/// Most nodes of a parsed expression.
pub const MAX_NODES: usize = 256;
/// Deepest nesting (parentheses, calls, unary chains).
pub const MAX_DEPTH: usize = 64;

/// A binary operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    And,
    Or,
}

/// A function of the expression language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    Where,
    Abs,
    Sqrt,
    Log,
    Exp,
    Min,
    Max,
    Clip,
}

impl Func {
    fn parse(name: &str) -> Option<Func> {
        Some(match name {
            "where" => Func::Where,
            "abs" => Func::Abs,
            "sqrt" => Func::Sqrt,
            "log" => Func::Log,
            "exp" => Func::Exp,
            "min" => Func::Min,
            "max" => Func::Max,
            "clip" => Func::Clip,
            _ => return None,
        })
    }

    /// Accepted argument counts.
    fn arity(self) -> (usize, usize) {
        match self {
            Func::Where | Func::Clip => (3, 3),
            Func::Abs | Func::Sqrt | Func::Log | Func::Exp => (1, 1),
            Func::Min | Func::Max => (2, 8),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Func::Where => "where",
            Func::Abs => "abs",
            Func::Sqrt => "sqrt",
            Func::Log => "log",
            Func::Exp => "exp",
            Func::Min => "min",
            Func::Max => "max",
            Func::Clip => "clip",
        }
    }
}

/// A parsed expression. Bands are indices into [`Program::bands`].
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Num(f32),
    Band(usize),
    Neg(Box<Expr>),
    Not(Box<Expr>),
    Bin(Op, Box<Expr>, Box<Expr>),
    Call(Func, Vec<Expr>),
}

/// An expression and the bands it reads, in order of first use.
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    pub expr: Expr,
    pub bands: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Num(f64),
    Name(String),
    Op(&'static str),
    LParen,
    RParen,
    Comma,
}

/// Parses `text`; `known` says which band names exist. Errors name
/// `field` and the byte position.
pub fn parse(field: &str, text: &str, known: &dyn Fn(&str) -> bool) -> Result<Program> {
    let bad = |pos: usize, why: &str| Error::invalid(field, text, &format!("at position {pos}: {why}"));
    if text.trim().is_empty() {
        return Err(Error::invalid(field, text, "empty expression"));
    }
    if text.len() > MAX_CHARS {
        return Err(Error::invalid(field, format!("{} characters", text.len()), &format!("longer than {MAX_CHARS} characters")));
    }
    if let Some(pos) = text.bytes().position(|b| !b.is_ascii() || (b.is_ascii_control() && !b.is_ascii_whitespace())) {
        return Err(bad(pos, "only printable ASCII is allowed"));
    }
    let tokens = lex(text).map_err(|(pos, why)| bad(pos, &why))?;
    let mut p = Parser { tokens, at: 0, depth: 0, nodes: 0, bands: Vec::new(), known, end: text.len() };
    let expr = p.or().map_err(|(pos, why)| bad(pos, &why))?;
    if let Some((pos, t)) = p.tokens.get(p.at) {
        return Err(bad(*pos, &format!("unexpected {}", describe(t))));
    }
    Ok(Program { expr, bands: p.bands })
}

fn describe(t: &Token) -> String {
    match t {
        Token::Num(n) => format!("number {n}"),
        Token::Name(n) => format!("name {n:?}"),
        Token::Op(o) => format!("{o:?}"),
        Token::LParen => "\"(\"".into(),
        Token::RParen => "\")\"".into(),
        Token::Comma => "\",\"".into(),
    }
}

type Lexed = std::result::Result<Vec<(usize, Token)>, (usize, String)>;

fn lex(text: &str) -> Lexed {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
            if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
                let mut j = i + 1;
                if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
                    j += 1;
                }
                if j < b.len() && b[j].is_ascii_digit() {
                    i = j;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                }
            }
            let s = &text[start..i];
            let v: f64 = s.parse().map_err(|_| (start, format!("{s:?} is not a number")))?;
            if !v.is_finite() {
                return Err((start, format!("{s:?} is not a finite number")));
            }
            out.push((start, Token::Num(v)));
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push((start, Token::Name(text[start..i].to_string())));
            continue;
        }
        let two = b.get(i..i + 2).map(|s| std::str::from_utf8(s).unwrap_or(""));
        let op2 = ["**", "<=", ">=", "==", "!="].into_iter().find(|o| two == Some(*o));
        if let Some(o) = op2 {
            out.push((start, Token::Op(o)));
            i += 2;
            continue;
        }
        let token = match c {
            b'+' => Token::Op("+"),
            b'-' => Token::Op("-"),
            b'*' => Token::Op("*"),
            b'/' => Token::Op("/"),
            b'<' => Token::Op("<"),
            b'>' => Token::Op(">"),
            b'(' => Token::LParen,
            b')' => Token::RParen,
            b',' => Token::Comma,
            _ => return Err((start, format!("unexpected character {:?}", c as char))),
        };
        out.push((start, token));
        i += 1;
    }
    Ok(out)
}

type Parsed = std::result::Result<Expr, (usize, String)>;

struct Parser<'a> {
    tokens: Vec<(usize, Token)>,
    at: usize,
    depth: usize,
    nodes: usize,
    bands: Vec<String>,
    known: &'a dyn Fn(&str) -> bool,
    end: usize,
}

impl Parser<'_> {
    fn pos(&self) -> usize {
        self.tokens.get(self.at).map_or(self.end, |t| t.0)
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at).map(|t| &t.1)
    }

    fn eat_op(&mut self, ops: &[&'static str]) -> Option<&'static str> {
        match self.peek() {
            Some(Token::Op(o)) if ops.contains(o) => {
                let o = *o;
                self.at += 1;
                Some(o)
            }
            _ => None,
        }
    }

    fn eat_word(&mut self, word: &str) -> bool {
        if matches!(self.peek(), Some(Token::Name(n)) if n == word) {
            self.at += 1;
            return true;
        }
        false
    }

    /// Counts a node and guards the depth of the recursion.
    fn node(&mut self, e: Expr) -> Parsed {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err((self.pos(), format!("more than {MAX_NODES} nodes")));
        }
        Ok(e)
    }

    fn enter(&mut self) -> std::result::Result<(), (usize, String)> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err((self.pos(), format!("nested deeper than {MAX_DEPTH} levels")));
        }
        Ok(())
    }

    fn bin(&mut self, op: Op, a: Expr, b: Expr) -> Parsed {
        self.node(Expr::Bin(op, Box::new(a), Box::new(b)))
    }

    fn or(&mut self) -> Parsed {
        self.enter()?;
        let mut e = self.and()?;
        while self.eat_word("or") {
            let r = self.and()?;
            e = self.bin(Op::Or, e, r)?;
        }
        self.depth -= 1;
        Ok(e)
    }

    fn and(&mut self) -> Parsed {
        let mut e = self.not()?;
        while self.eat_word("and") {
            let r = self.not()?;
            e = self.bin(Op::And, e, r)?;
        }
        Ok(e)
    }

    fn not(&mut self) -> Parsed {
        if self.eat_word("not") {
            self.enter()?;
            let e = self.not()?;
            self.depth -= 1;
            return self.node(Expr::Not(Box::new(e)));
        }
        self.cmp()
    }

    fn cmp(&mut self) -> Parsed {
        let e = self.sum()?;
        let Some(o) = self.eat_op(&["<", "<=", ">", ">=", "==", "!="]) else { return Ok(e) };
        let op = match o {
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "==" => Op::Eq,
            _ => Op::Ne,
        };
        let r = self.sum()?;
        if matches!(self.peek(), Some(Token::Op("<" | "<=" | ">" | ">=" | "==" | "!="))) {
            return Err((self.pos(), "chained comparisons are not supported; join them with and".into()));
        }
        self.bin(op, e, r)
    }

    fn sum(&mut self) -> Parsed {
        let mut e = self.term()?;
        while let Some(o) = self.eat_op(&["+", "-"]) {
            let r = self.term()?;
            e = self.bin(if o == "+" { Op::Add } else { Op::Sub }, e, r)?;
        }
        Ok(e)
    }

    fn term(&mut self) -> Parsed {
        let mut e = self.unary()?;
        while let Some(o) = self.eat_op(&["*", "/"]) {
            let r = self.unary()?;
            e = self.bin(if o == "*" { Op::Mul } else { Op::Div }, e, r)?;
        }
        Ok(e)
    }

    fn unary(&mut self) -> Parsed {
        if let Some(o) = self.eat_op(&["-", "+"]) {
            self.enter()?;
            let e = self.unary()?;
            self.depth -= 1;
            return if o == "-" { self.node(Expr::Neg(Box::new(e))) } else { Ok(e) };
        }
        self.power()
    }

    fn power(&mut self) -> Parsed {
        let base = self.atom()?;
        if self.eat_op(&["**"]).is_some() {
            self.enter()?;
            let exp = self.unary()?;
            self.depth -= 1;
            return self.bin(Op::Pow, base, exp);
        }
        Ok(base)
    }

    fn atom(&mut self) -> Parsed {
        let pos = self.pos();
        let Some((_, t)) = self.tokens.get(self.at).cloned() else { return Err((pos, "the expression ends too early".into())) };
        self.at += 1;
        match t {
            Token::Num(v) => self.node(Expr::Num(v as f32)),
            Token::LParen => {
                let e = self.or()?;
                if self.peek() != Some(&Token::RParen) {
                    return Err((self.pos(), "expected \")\"".into()));
                }
                self.at += 1;
                Ok(e)
            }
            Token::Name(name) if name == "not" => Err((pos, "\"not\" binds looser than arithmetic and comparisons: put it in parentheses, as (not x)".into())),
            Token::Name(name) if self.peek() == Some(&Token::LParen) => {
                let f = Func::parse(&name).ok_or_else(|| (pos, format!("unknown function {name:?}; known: where, abs, sqrt, log, exp, min, max, clip")))?;
                self.at += 1;
                self.enter()?;
                let mut args = Vec::new();
                if self.peek() != Some(&Token::RParen) {
                    loop {
                        args.push(self.or()?);
                        if self.peek() == Some(&Token::Comma) {
                            self.at += 1;
                            continue;
                        }
                        break;
                    }
                }
                if self.peek() != Some(&Token::RParen) {
                    return Err((self.pos(), format!("expected \",\" or \")\" in the arguments of {name}")));
                }
                self.at += 1;
                self.depth -= 1;
                let (lo, hi) = f.arity();
                if args.len() < lo || args.len() > hi {
                    let want = if lo == hi { format!("{lo}") } else { format!("{lo} to {hi}") };
                    return Err((pos, format!("{} takes {want} arguments, got {}", f.name(), args.len())));
                }
                self.node(Expr::Call(f, args))
            }
            Token::Name(name) if matches!(name.as_str(), "and" | "or") => Err((pos, format!("{name:?} needs an operand before it"))),
            Token::Name(name) => {
                if !(self.known)(&name) {
                    return Err((pos, format!("unknown band {name:?}")));
                }
                let i = match self.bands.iter().position(|b| *b == name) {
                    Some(i) => i,
                    None => {
                        self.bands.push(name);
                        self.bands.len() - 1
                    }
                };
                self.node(Expr::Band(i))
            }
            other => Err((pos, format!("unexpected {}", describe(&other)))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Program> {
        parse("compute.x", text, &|b| ["red", "nir", "scl"].contains(&b))
    }

    #[test]
    fn precedence_follows_python() {
        let prog = p("-nir ** 2 + red * 3 > 1 and not red == 0 or scl").unwrap();
        assert_eq!(prog.bands, ["nir", "red", "scl"]);
        let Expr::Bin(Op::Or, left, _) = prog.expr else { panic!() };
        let Expr::Bin(Op::And, cmp, not) = *left else { panic!() };
        assert!(matches!(*not, Expr::Not(_)));
        let Expr::Bin(Op::Gt, sum, _) = *cmp else { panic!() };
        let Expr::Bin(Op::Add, neg, _) = *sum else { panic!() };
        // -nir ** 2 is -(nir ** 2), as in Python.
        assert!(matches!(*neg, Expr::Neg(ref e) if matches!(**e, Expr::Bin(Op::Pow, _, _))));
        assert_eq!(p("2 ** 3 ** 2").unwrap().expr, p("2 ** (3 ** 2)").unwrap().expr);
    }

    #[test]
    fn bad_expressions_say_where() {
        for (text, want) in [
            ("", "empty"),
            ("red +", "position 5"),
            ("(red", "expected \")\""),
            ("foo(red)", "unknown function"),
            ("sqrt(red, nir)", "takes 1 arguments"),
            ("where(red, nir)", "takes 3"),
            ("blue + 1", "unknown band \"blue\""),
            ("red # 2", "unexpected character"),
            ("réd", "printable ASCII"),
            ("1 < red < 2", "chained"),
            ("red nir", "unexpected name"),
            ("1e999", "finite"),
        ] {
            let e = p(text).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("compute.x"), "{text:?}: {e}");
        }
        let deep = format!("{}red{}", "(".repeat(200), ")".repeat(200));
        assert!(p(&deep).unwrap_err().to_string().contains("nested deeper"));
        let long = vec!["red"; 300].join(" + ");
        assert!(p(&long).unwrap_err().to_string().contains("longer than"));
        let many = vec!["1"; 200].join("+");
        assert!(p(&many).unwrap_err().to_string().contains("nodes"));
    }

    use proptest::prelude::*;

    /// A well-formed expression over bands a and b, and its value at
    /// (a, b) in f64 the way Python would compute it.
    fn arb_expr() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![(0u32..1000).prop_map(|v| format!("{}", v as f64 / 10.0)), Just("a".to_string()), Just("b".to_string()),];
        leaf.prop_recursive(5, 64, 3, |inner| {
            prop_oneof![
                (inner.clone(), prop::sample::select(vec!["+", "-", "*", "/", "<", ">=", "==", "and", "or"]), inner.clone())
                    .prop_map(|(x, op, y)| format!("({x} {op} {y})")),
                inner.clone().prop_map(|x| format!("-({x})")),
                inner.clone().prop_map(|x| format!("(not ({x}))")),
                inner.clone().prop_map(|x| format!("abs({x})")),
                inner.clone().prop_map(|x| format!("sqrt(abs({x}))")),
                (inner.clone(), inner.clone()).prop_map(|(x, y)| format!("min({x}, {y})")),
                (inner.clone(), inner.clone(), inner.clone()).prop_map(|(c, x, y)| format!("where({c}, {x}, {y})")),
                (inner.clone(), inner.clone(), inner).prop_map(|(x, lo, hi)| format!("clip({x}, {lo}, {hi})")),
            ]
        })
    }

    fn reference(e: &Expr, a: f64, b: f64) -> f64 {
        let t = |c: bool| if c { 1.0 } else { 0.0 };
        match e {
            Expr::Num(v) => *v as f64,
            Expr::Band(0) => a,
            Expr::Band(_) => b,
            Expr::Neg(x) => -reference(x, a, b),
            Expr::Not(x) => t(reference(x, a, b) == 0.0),
            Expr::Bin(op, x, y) => {
                let (x, y) = (reference(x, a, b), reference(y, a, b));
                match op {
                    Op::Add => x + y,
                    Op::Sub => x - y,
                    Op::Mul => x * y,
                    Op::Div => x / y,
                    Op::Pow => x.powf(y),
                    Op::Lt => t(x < y),
                    Op::Le => t(x <= y),
                    Op::Gt => t(x > y),
                    Op::Ge => t(x >= y),
                    Op::Eq => t(x == y),
                    Op::Ne => t(x != y),
                    Op::And => t(x != 0.0 && y != 0.0),
                    Op::Or => t(x != 0.0 || y != 0.0),
                }
            }
            Expr::Call(f, args) => {
                let v: Vec<f64> = args.iter().map(|x| reference(x, a, b)).collect();
                let nan = v.iter().any(|x| x.is_nan());
                match f {
                    Func::Abs => v[0].abs(),
                    Func::Sqrt => v[0].sqrt(),
                    Func::Log => v[0].ln(),
                    Func::Exp => v[0].exp(),
                    Func::Min if nan => f64::NAN,
                    Func::Max if nan => f64::NAN,
                    Func::Min => v.iter().copied().fold(f64::INFINITY, f64::min),
                    Func::Max => v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    Func::Where => {
                        if v[0] != 0.0 {
                            v[1]
                        } else {
                            v[2]
                        }
                    }
                    Func::Clip if nan => f64::NAN,
                    Func::Clip => v[0].max(v[1]).min(v[2]),
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Any well-formed expression parses, and its f32 evaluation agrees
        /// with an f64 reference (both non-finite, or close) on random
        /// inputs.
        #[test]
        fn well_formed_expressions_parse_and_evaluate(text in arb_expr(), a in -100.0f32..100.0, b in -100.0f32..100.0) {
            let prog = match parse("compute.x", &text, &|n| n == "a" || n == "b") {
                Ok(p) => p,
                // Too many nodes is a limit, not a parse failure.
                Err(e) => { prop_assert!(e.to_string().contains("nodes") || e.to_string().contains("longer"), "{}: {}", text, e); return Ok(()); }
            };
            let inputs: Vec<Vec<f32>> = prog.bands.iter().map(|n| vec![if n == "a" { a } else { b }; 3]).collect();
            let refs: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
            let got = crate::compute::eval::evaluate(&prog.expr, &refs, 3, 1);
            let (ra, rb) = if prog.bands.first().map(String::as_str) == Some("b") { (b as f64, a as f64) } else { (a as f64, b as f64) };
            let want = reference(&prog.expr, ra, rb);
            prop_assert!(got.iter().all(|g| g.to_bits() == got[0].to_bits()), "one value per pixel");
            let g = got[0] as f64;
            if want.is_finite() && want.abs() < 1e30 {
                // f32 arithmetic, and comparisons at near-ties, may differ
                // from f64: close, or a comparison flipped at a tie.
                prop_assert!(g.is_finite() || want.abs() > 1e6, "{}: got {} want {}", text, g, want);
                let branches = ["<", ">=", "==", "where", "min", "clip", "and", "or", "not", "*", "/"].iter().any(|k| text.contains(k));
                if !branches && want.abs() < 1e6 {
                    prop_assert!((g - want).abs() <= 1e-3 * want.abs().max(1.0), "{}: got {} want {}", text, g, want);
                }
            }
        }

        /// Arbitrary token soup and mutations of well-formed expressions
        /// never panic: they parse or fail with a positioned error.
        #[test]
        fn any_text_parses_or_fails_cleanly(text in arb_expr(), cut in 0usize..200, insert in prop::sample::select(vec!["(", ")", ",", "**", "+", "and", "zz", "1e", ".", "", "where(", "é"])) {
            let at = (0..=text.len()).rev().find(|i| *i <= cut && text.is_char_boundary(*i)).unwrap_or(0);
            let mutated = format!("{}{}{}", &text[..at], insert, &text[at..]);
            match parse("compute.x", &mutated, &|n| n == "a" || n == "b") {
                Ok(_) => {}
                Err(e) => prop_assert!(e.to_string().contains("compute.x"), "{}", e),
            }
        }
    }
}
