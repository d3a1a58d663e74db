//! Vectorised evaluation of a parsed expression: blocks of pixels, one
//! operation over a whole block at a time (loops the compiler vectorises),
//! in f32.

use super::expr::{Expr, Func, Op};

/// Pixels per block: the working set of an expression's temporaries stays
/// in cache.
const BLOCK: usize = 2048;
/// Below this many pixels one thread does it all.
const PARALLEL_MIN: usize = 1 << 17;

/// `expr` over `n` pixels; `inputs[i]` holds band `i` of the expression's
/// bands. Returns the values; the caller combines validity
/// ([`valid_result`]).
pub fn evaluate(expr: &Expr, inputs: &[&[f32]], n: usize, threads: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; n];
    let parts = if n < PARALLEL_MIN { 1 } else { threads.max(1) };
    if parts == 1 {
        run(expr, inputs, 0, &mut out);
        return out;
    }
    let per = n.div_ceil(parts).div_ceil(BLOCK) * BLOCK;
    std::thread::scope(|s| {
        for (k, part) in out.chunks_mut(per).enumerate() {
            s.spawn(move || run(expr, inputs, k * per, part));
        }
    });
    out
}

/// Valid where every input is valid and the value is finite.
pub fn valid_result(values: &[f32], inputs_valid: &[bool]) -> Vec<bool> {
    values.iter().zip(inputs_valid).map(|(v, ok)| *ok && v.is_finite()).collect()
}

fn run(expr: &Expr, inputs: &[&[f32]], first: usize, out: &mut [f32]) {
    let mut pool = Vec::new();
    for (k, block) in out.chunks_mut(BLOCK).enumerate() {
        let start = first + k * BLOCK;
        eval(expr, inputs, start, block, &mut pool);
    }
}

/// Evaluates `e` for pixels `start..start + out.len()` into `out`; `pool`
/// recycles temporaries.
fn eval(e: &Expr, inputs: &[&[f32]], start: usize, out: &mut [f32], pool: &mut Vec<Vec<f32>>) {
    let n = out.len();
    match e {
        Expr::Num(v) => out.fill(*v),
        Expr::Band(i) => out.copy_from_slice(&inputs[*i][start..start + n]),
        Expr::Neg(a) => {
            eval(a, inputs, start, out, pool);
            out.iter_mut().for_each(|v| *v = -*v);
        }
        Expr::Not(a) => {
            eval(a, inputs, start, out, pool);
            out.iter_mut().for_each(|v| *v = (*v == 0.0) as u8 as f32);
        }
        Expr::Bin(op, a, b) => {
            eval(a, inputs, start, out, pool);
            // A band on the right is read where it is, not copied.
            match &**b {
                Expr::Band(j) => binary(*op, out, &inputs[*j][start..start + n]),
                _ => {
                    let mut t = take(pool, n);
                    eval(b, inputs, start, &mut t, pool);
                    binary(*op, out, &t);
                    pool.push(t);
                }
            }
        }
        Expr::Call(f, args) => {
            eval(&args[0], inputs, start, out, pool);
            match f {
                Func::Abs => out.iter_mut().for_each(|v| *v = v.abs()),
                Func::Sqrt => out.iter_mut().for_each(|v| *v = v.sqrt()),
                Func::Log => out.iter_mut().for_each(|v| *v = v.ln()),
                Func::Exp => out.iter_mut().for_each(|v| *v = v.exp()),
                Func::Min | Func::Max => {
                    let mut t = take(pool, n);
                    let pick = if *f == Func::Min { pick_min } else { pick_max };
                    for a in &args[1..] {
                        eval(a, inputs, start, &mut t, pool);
                        out.iter_mut().zip(&t).for_each(|(a, b)| *a = pick(*a, *b));
                    }
                    pool.push(t);
                }
                Func::Where => {
                    let (mut a, mut b) = (take(pool, n), take(pool, n));
                    eval(&args[1], inputs, start, &mut a, pool);
                    eval(&args[2], inputs, start, &mut b, pool);
                    for ((c, a), b) in out.iter_mut().zip(&a).zip(&b) {
                        *c = if *c != 0.0 { *a } else { *b };
                    }
                    pool.push(a);
                    pool.push(b);
                }
                Func::Clip => {
                    let (mut lo, mut hi) = (take(pool, n), take(pool, n));
                    eval(&args[1], inputs, start, &mut lo, pool);
                    eval(&args[2], inputs, start, &mut hi, pool);
                    // numpy's clip: minimum(maximum(x, lo), hi).
                    for ((v, lo), hi) in out.iter_mut().zip(&lo).zip(&hi) {
                        *v = pick_min(pick_max(*v, *lo), *hi);
                    }
                    pool.push(lo);
                    pool.push(hi);
                }
            }
        }
    }
}

fn take(pool: &mut Vec<Vec<f32>>, n: usize) -> Vec<f32> {
    let mut t = pool.pop().unwrap_or_default();
    t.resize(n, 0.0);
    t
}

/// numpy's minimum / maximum: NaN wins.
#[inline]
fn pick_min(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else if b < a {
        b
    } else {
        a
    }
}

#[inline]
fn pick_max(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else if b > a {
        b
    } else {
        a
    }
}

/// `out = out op b`, elementwise; comparisons and logic give 1 or 0.
fn binary(op: Op, out: &mut [f32], b: &[f32]) {
    let flag = |c: bool| c as u8 as f32;
    let it = out.iter_mut().zip(b);
    match op {
        Op::Add => it.for_each(|(a, b)| *a += *b),
        Op::Sub => it.for_each(|(a, b)| *a -= *b),
        Op::Mul => it.for_each(|(a, b)| *a *= *b),
        Op::Div => it.for_each(|(a, b)| *a /= *b),
        Op::Pow => it.for_each(|(a, b)| *a = if *b == 2.0 { *a * *a } else { a.powf(*b) }),
        Op::Lt => it.for_each(|(a, b)| *a = flag(*a < *b)),
        Op::Le => it.for_each(|(a, b)| *a = flag(*a <= *b)),
        Op::Gt => it.for_each(|(a, b)| *a = flag(*a > *b)),
        Op::Ge => it.for_each(|(a, b)| *a = flag(*a >= *b)),
        Op::Eq => it.for_each(|(a, b)| *a = flag(*a == *b)),
        Op::Ne => it.for_each(|(a, b)| *a = flag(*a != *b)),
        Op::And => it.for_each(|(a, b)| *a = flag(*a != 0.0 && *b != 0.0)),
        Op::Or => it.for_each(|(a, b)| *a = flag(*a != 0.0 || *b != 0.0)),
    }
}
