//! Properties of the OT text type: transform converges (TP1), compose agrees with
//! applying in turn, apply agrees with a model that works on UTF-16 code units as JavaScript
//! does (errors included), diff produces the new text, JSON round-trips, and arbitrary ops
//! never panic. Documents and ops mix one-, two-, three- and four-byte characters, so
//! surrogate pairs are everywhere.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use syncmux::ot::{Component, OpError, Side, TextOp};

/// Characters of every UTF-8 width; the last two are outside the BMP (surrogate pairs).
const ALPHABET: [char; 8] = ['a', 'b', ' ', 'é', 'ß', '€', '😀', '𝄞'];

fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(&ALPHABET[..]), 0..24)
        .prop_map(|chars| chars.into_iter().collect())
}

/// One step of building an op on a document: retain or delete some characters, or insert.
#[derive(Clone, Debug)]
enum Step {
    Retain(usize),
    Delete(usize),
    Insert(String),
}

fn steps() -> impl Strategy<Value = (Vec<Step>, bool)> {
    let step = prop_oneof![
        (1usize..6).prop_map(Step::Retain),
        (1usize..6).prop_map(Step::Delete),
        text().prop_map(Step::Insert),
    ];
    (prop::collection::vec(step, 0..8), any::<bool>())
}

/// An op that applies to `doc`: the steps, clamped to the characters left, then (if
/// `to_end`) a retain of the rest; otherwise the op stops early.
fn build(doc: &str, steps: &[Step], to_end: bool) -> TextOp {
    let chars: Vec<char> = doc.chars().collect();
    let units = |cs: &[char]| cs.iter().map(|c| c.len_utf16() as u64).sum::<u64>();
    let mut at = 0;
    let mut op = TextOp::new();
    for step in steps {
        match step {
            Step::Retain(n) => {
                let end = (at + n).min(chars.len());
                op = op.retain(units(&chars[at..end]));
                at = end;
            }
            Step::Delete(n) => {
                let end = (at + n).min(chars.len());
                op = op.delete(units(&chars[at..end]));
                at = end;
            }
            Step::Insert(s) => op = op.insert(s.clone()),
        }
    }
    if to_end {
        op = op.retain(units(&chars[at..]));
    }
    op
}

/// An arbitrary op, fitting no document in particular.
fn any_op() -> impl Strategy<Value = TextOp> {
    let component = prop_oneof![
        (0u64..40).prop_map(Component::Retain),
        (0u64..40).prop_map(Component::Delete),
        text().prop_map(Component::Insert),
    ];
    prop::collection::vec(component, 0..8).prop_map(TextOp::from_components)
}

/// open-ot's `apply`, on UTF-16 code units as JavaScript strings are: the model our apply
/// must agree with. `None` where it would produce a lone surrogate.
fn model_apply(doc: &str, op: &TextOp) -> Result<Option<String>, String> {
    let s: Vec<u16> = doc.encode_utf16().collect();
    let mut out: Vec<u16> = Vec::new();
    let mut index = 0usize;
    for c in op.components() {
        match c {
            Component::Insert(t) => out.extend(t.encode_utf16()),
            Component::Retain(n) | Component::Delete(n) => {
                let n = *n as usize;
                if index + n > s.len() {
                    let kind = if matches!(c, Component::Retain(_)) {
                        "Retain"
                    } else {
                        "Delete"
                    };
                    return Err(format!(
                        "Operation goes past the end of the string. Index: {index}, {kind}: {n}, Snapshot Length: {}",
                        s.len()
                    ));
                }
                if matches!(c, Component::Retain(_)) {
                    out.extend_from_slice(&s[index..index + n]);
                }
                index += n;
            }
        }
    }
    out.extend_from_slice(&s[index..]);
    Ok(String::from_utf16(&out).ok())
}

/// Whether `op`'s retain and delete boundaries all fall between characters of `doc`.
fn on_characters(doc: &str, op: &TextOp) -> bool {
    let mut boundaries = vec![0u64];
    let mut at = 0;
    for c in doc.chars() {
        at += c.len_utf16() as u64;
        boundaries.push(at);
    }
    let mut index = 0;
    for c in op.components() {
        if let Component::Retain(n) | Component::Delete(n) = c {
            index += n;
            if index <= at && !boundaries.contains(&index) {
                return false;
            }
        }
    }
    true
}

fn is_normalized(op: &TextOp) -> bool {
    let c = op.components();
    c.iter().all(|c| !c.is_empty())
        && c.windows(2)
            .all(|w| std::mem::discriminant(&w[0]) != std::mem::discriminant(&w[1]))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// TP1: both orders of applying two concurrent ops end in the same text.
    #[test]
    fn transform_converges(
        doc in text(),
        (sa, ea) in steps(),
        (sb, eb) in steps(),
    ) {
        let a = build(&doc, &sa, ea);
        let b = build(&doc, &sb, eb);
        let after_a = a.apply(&doc).unwrap();
        let after_b = b.apply(&doc).unwrap();
        let b2 = b.transform(&a, Side::Right);
        let a2 = a.transform(&b, Side::Left);
        prop_assert!(is_normalized(&a2) && is_normalized(&b2));
        let left = b2.apply(&after_a).unwrap();
        let right = a2.apply(&after_b).unwrap();
        prop_assert_eq!(&left, &right);
        // Nothing inserted is lost: the converged text is at least as long as each op's
        // own inserts.
        let inserted: u64 = a
            .components()
            .iter()
            .filter_map(|c| match c {
                Component::Insert(s) => Some(TextOp::utf16_len(s)),
                _ => None,
            })
            .sum();
        prop_assert!(TextOp::utf16_len(&left) >= inserted);
    }

    /// The server transforms an op against a history, oldest first, on the right; the
    /// client that made it transforms each logged op against it as it arrives, on the left.
    /// Both end with the same text (TP1, step by step, as `OtServer` and `OtClient` do).
    #[test]
    fn transform_against_a_history_converges(
        doc in text(),
        (sa, ea) in steps(),
        history in prop::collection::vec(steps(), 1..4),
    ) {
        let mine = build(&doc, &sa, ea);
        let mut server = doc.clone();
        let mut logged = Vec::new();
        for (s, e) in &history {
            let op = build(&server, s, *e);
            server = op.apply(&server).unwrap();
            logged.push(op);
        }
        let mut incoming = mine.clone();
        for op in &logged {
            incoming = incoming.transform(op, Side::Right);
        }
        let at_server = incoming.apply(&server).unwrap();
        let mut client = mine.apply(&doc).unwrap();
        let mut pending = mine.clone();
        for op in &logged {
            let remote = op.transform(&pending, Side::Left);
            pending = pending.transform(op, Side::Right);
            client = remote.apply(&client).unwrap();
        }
        prop_assert_eq!(&pending, &incoming);
        prop_assert_eq!(at_server, client);
    }

    /// compose(a, b) does what applying a, then b does.
    #[test]
    fn compose_agrees_with_applying_in_turn(
        doc in text(),
        (sa, ea) in steps(),
        (sb, eb) in steps(),
    ) {
        let a = build(&doc, &sa, ea);
        let mid = a.apply(&doc).unwrap();
        let b = build(&mid, &sb, eb);
        let ab = a.compose(&b).unwrap();
        prop_assert!(is_normalized(&ab));
        prop_assert_eq!(ab.apply(&doc).unwrap(), b.apply(&mid).unwrap());
    }

    /// apply agrees with open-ot's, run on UTF-16 code units: the same text, or the same
    /// error message; where JavaScript would split a surrogate pair, we refuse.
    #[test]
    fn apply_agrees_with_the_utf16_model(doc in text(), op in any_op()) {
        let ours = op.apply(&doc);
        match model_apply(&doc, &op) {
            Ok(Some(text)) if on_characters(&doc, &op) => prop_assert_eq!(ours, Ok(text)),
            Ok(_) => prop_assert!(
                matches!(ours, Err(OpError::SplitsSurrogatePair { .. })),
                "{:?}", ours
            ),
            Err(message) => {
                // Past the end — unless a surrogate pair was split before it.
                match ours {
                    Err(e @ OpError::PastEnd { .. }) => prop_assert_eq!(e.to_string(), message),
                    Err(OpError::SplitsSurrogatePair { .. }) => {}
                    other => prop_assert!(false, "{other:?} where the model says {message}"),
                }
            }
        }
    }

    /// Arbitrary ops, fitting nothing: transform, compose and apply never panic, and what
    /// they produce is normalized.
    #[test]
    fn arbitrary_ops_never_panic(doc in text(), a in any_op(), b in any_op()) {
        for side in [Side::Left, Side::Right] {
            prop_assert!(is_normalized(&a.transform(&b, side)));
        }
        if let Ok(ab) = a.compose(&b) {
            prop_assert!(is_normalized(&ab));
        }
        let _ = a.apply(&doc);
    }

    /// diff(old, new) turns old into new, on character boundaries.
    #[test]
    fn diff_produces_the_new_text(old in text(), new in text()) {
        let op = TextOp::diff(&old, &new);
        prop_assert!(on_characters(&old, &op));
        prop_assert_eq!(op.apply(&old).unwrap(), new);
    }

    /// JSON round-trips, and lengths are JavaScript's.
    #[test]
    fn json_round_trips(op in any_op(), s in text()) {
        let json = op.to_json();
        let back: TextOp = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back, op);
        prop_assert_eq!(TextOp::utf16_len(&s), s.encode_utf16().count() as u64);
    }
}

#[test]
fn ties_follow_the_side() {
    let a = TextOp::new().retain(1).insert("A");
    let b = TextOp::new().retain(1).insert("B");
    let doc = "xy";
    // Left: a's text first, whichever order the ops are applied in.
    let via_b = a
        .transform(&b, Side::Left)
        .apply(&b.apply(doc).unwrap())
        .unwrap();
    let via_a = b
        .transform(&a, Side::Right)
        .apply(&a.apply(doc).unwrap())
        .unwrap();
    assert_eq!((via_b.as_str(), via_a.as_str()), ("xABy", "xABy"));
    let via_b = a
        .transform(&b, Side::Right)
        .apply(&b.apply(doc).unwrap())
        .unwrap();
    assert_eq!(via_b, "xBAy");
}

#[test]
fn deletes_vanish_where_the_other_deleted() {
    // Both delete "bc": the second delete finds nothing left to delete.
    let a = TextOp::new().retain(1).delete(2);
    let b = TextOp::new().retain(1).delete(3);
    assert_eq!(a.transform(&b, Side::Left), TextOp::new().retain(1));
    assert_eq!(
        b.transform(&a, Side::Right),
        TextOp::new().retain(1).delete(1)
    );
    assert_eq!(
        b.transform(&a, Side::Right)
            .apply(&a.apply("abcde").unwrap())
            .unwrap(),
        "ae"
    );
}
