//! The OT text type fed arbitrary documents and ops: apply, transform, compose, diff and
//! JSON parsing never panic, and their results are normalized.
//!
//! Ops come two ways: raw (counts and strings as the fuzzer picks them: they rarely fit the
//! document) and fitted (the same steps clamped to the document's characters, so they
//! apply). Whenever both ops apply, transform converges —
//! `apply(apply(s, a), transform(b, a, right)) == apply(apply(s, b), transform(a, b, left))` —
//! and compose agrees with applying in turn.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use syncmux::ot::{Component, Side, TextOp};

#[derive(Arbitrary, Debug)]
enum Step {
    Retain(u16),
    Delete(u16),
    Insert(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    doc: String,
    a: Vec<Step>,
    b: Vec<Step>,
    /// Fit the ops to the document (else take them raw).
    fit: bool,
    /// Text for `TextOp::from_json` and `TextOp::diff`.
    other: String,
}

fn raw(steps: &[Step]) -> TextOp {
    TextOp::from_components(steps.iter().map(|s| match s {
        Step::Retain(n) => Component::Retain(u64::from(*n)),
        Step::Delete(n) => Component::Delete(u64::from(*n)),
        Step::Insert(t) => Component::Insert(t.clone()),
    }))
}

/// The steps, counted in characters of `doc` and clamped to what is left.
fn fitted(doc: &str, steps: &[Step]) -> TextOp {
    let chars: Vec<char> = doc.chars().collect();
    let units = |cs: &[char]| cs.iter().map(|c| c.len_utf16() as u64).sum::<u64>();
    let mut at = 0;
    let mut op = TextOp::new();
    for step in steps {
        match step {
            Step::Retain(n) | Step::Delete(n) => {
                let end = (at + usize::from(*n)).min(chars.len());
                let count = units(&chars[at..end]);
                op = if matches!(step, Step::Retain(_)) {
                    op.retain(count)
                } else {
                    op.delete(count)
                };
                at = end;
            }
            Step::Insert(t) => op = op.insert(t.clone()),
        }
    }
    op
}

fn normalized(op: &TextOp) -> bool {
    let c = op.components();
    c.iter().all(|c| !c.is_empty())
        && c.windows(2)
            .all(|w| std::mem::discriminant(&w[0]) != std::mem::discriminant(&w[1]))
}

fuzz_target!(|input: Input| {
    let doc = &input.doc;
    let (a, b) = if input.fit {
        (fitted(doc, &input.a), fitted(doc, &input.b))
    } else {
        (raw(&input.a), raw(&input.b))
    };
    let a2 = a.transform(&b, Side::Left);
    let b2 = b.transform(&a, Side::Right);
    assert!(normalized(&a2) && normalized(&b2));
    if let Ok(ab) = a.compose(&b) {
        assert!(normalized(&ab));
    }
    if let (Ok(after_a), Ok(after_b)) = (a.apply(doc), b.apply(doc)) {
        let left = b2.apply(&after_a).expect("b transformed applies after a");
        let right = a2.apply(&after_b).expect("a transformed applies after b");
        assert_eq!(left, right, "transform does not converge");
        let composed = a
            .compose(&b2)
            .expect("b2 applies after a: compose cannot fail");
        assert_eq!(composed.apply(doc).as_ref(), Ok(&left), "compose disagrees");
    }
    let diff = TextOp::diff(doc, &input.other);
    assert_eq!(diff.apply(doc).as_deref(), Ok(input.other.as_str()));
    if let Ok(value) = serde_json::from_str(&input.other) {
        // Read from the text itself (no `Value`), an op is what `from_json` makes of it.
        let from_value = TextOp::from_json(value);
        assert_eq!(TextOp::from_json_str(&input.other), from_value);
        if let Ok(op) = from_value {
            assert!(normalized(&op));
            let back: TextOp = serde_json::from_str(&op.to_json()).expect("our JSON reads back");
            assert_eq!(back, op);
        }
    }
});
