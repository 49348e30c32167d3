//! The `text` OT type of open-ot: apply, transform, compose, diff.
//!
//! An op is a list of components: insert a string, retain `n`, delete `n`. Lengths count
//! UTF-16 code units, as a JavaScript string's `length` does, because the peers that speak
//! this wire are JavaScript programs: `"😀é"` is 3 long. An op may stop early; the rest of
//! the document is kept, and past its last component an op behaves as an endless retain.
//!
//! The algorithms follow open-ot's `TextType` step for step, so that an op we transform is
//! the op a JavaScript peer would compute (trailing retains included). Two things differ,
//! both where open-ot would produce garbage:
//!
//! - **Surrogate pairs.** A Rust `String` cannot hold half of a pair, so a retain or delete
//!   boundary that would split one is refused with [`OpError::SplitsSurrogatePair`] (apply
//!   and compose), never a panic. Transform never splits a string, so it cannot fail.
//! - **Counts.** A count must be a non-negative integer (open-ot accepts any number), and a
//!   component must name exactly one of `i`, `r`, `d`.

use core::fmt;

use serde::de::{Deserialize, DeserializeSeed, Deserializer, Error as _};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Value;
use thiserror::Error;

/// Which op goes first when both insert at the same place (the `side` of open-ot's
/// `transform`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Side {
    /// The op being transformed wins ties: its text comes first.
    Left,
    /// The other op wins ties: its text comes first. The server transforms incoming ops
    /// with this side, so the logged op's insert comes first.
    Right,
}

/// One component of a [`TextOp`].
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Component {
    /// Keep this many UTF-16 code units (`{"r": n}`).
    Retain(u64),
    /// Insert this text (`{"i": "..."}`).
    Insert(String),
    /// Remove this many UTF-16 code units (`{"d": n}`).
    Delete(u64),
}

impl Component {
    /// The component's length in UTF-16 code units.
    pub fn len(&self) -> u64 {
        match self {
            Component::Retain(n) | Component::Delete(n) => *n,
            Component::Insert(s) => TextOp::utf16_len(s),
        }
    }

    /// Whether the component does nothing (a zero count or an empty string).
    pub fn is_empty(&self) -> bool {
        match self {
            Component::Retain(n) | Component::Delete(n) => *n == 0,
            Component::Insert(s) => s.is_empty(),
        }
    }
}

/// An operation on a text document: a normalized list of [`Component`]s (no empty
/// component, no two neighbours of one kind).
///
/// ```
/// use syncmux::ot::{Side, TextOp};
///
/// let doc = "Hello";
/// let alice = TextOp::new().retain(5).insert(" world"); // appends
/// let bob = TextOp::new().insert("Oh, ");                // prepends; the rest is kept
///
/// // Each side applies its own op, then the other's transformed against it.
/// let at_alice = alice.transform(&bob, Side::Left).apply(&bob.apply(doc)?)?;
/// let at_bob = bob.transform(&alice, Side::Right).apply(&alice.apply(doc)?)?;
/// assert_eq!(at_alice, "Oh, Hello world");
/// assert_eq!(at_alice, at_bob);
///
/// // On the wire, the JSON of open-ot.
/// assert_eq!(alice.to_json(), r#"[{"r":5},{"i":" world"}]"#);
/// # Ok::<(), syncmux::ot::OpError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct TextOp {
    components: Vec<Component>,
}

/// Why an op was refused. The `Display` text is what goes into an error frame; the first
/// four are open-ot's own messages, word for word, which its clients know.
#[derive(Clone, PartialEq, Eq, Debug, Error)]
#[non_exhaustive]
pub enum OpError {
    /// The op is not a JSON array.
    #[error("Operation must be an array")]
    NotAnArray,
    /// A component is not a JSON object.
    #[error("Operation component must be an object")]
    ComponentNotAnObject,
    /// A component is not exactly one of `{"i": string}`, `{"r": n}`, `{"d": n}` with `n` a
    /// non-negative integer.
    #[error("Operation component must be Insert, Retain, or Delete")]
    InvalidComponent,
    /// A retain or delete reaches past the end of the document.
    #[error(
        "Operation goes past the end of the string. Index: {index}, {kind}: {count}, \
         Snapshot Length: {len}"
    )]
    PastEnd {
        /// Where the component starts, in UTF-16 code units of the document.
        index: u64,
        /// Retain or delete.
        kind: CountKind,
        /// The component's count.
        count: u64,
        /// The document's length in UTF-16 code units.
        len: u64,
    },
    /// A retain or delete boundary falls between the two halves of a surrogate pair (a
    /// character outside the Basic Multilingual Plane, such as most emoji).
    #[error("Operation splits a surrogate pair. Index: {index}")]
    SplitsSurrogatePair {
        /// The boundary, in UTF-16 code units of the document the op applies to.
        index: u64,
    },
    /// The op would make the document longer than `max_document_len` allows (the OT client
    /// and server check their limit; `TextOp`'s own methods have none).
    #[error("Document too large: {len} UTF-16 code units (max {max})")]
    TooLong {
        /// The length it would have.
        len: u64,
        /// The maximum.
        max: u64,
    },
}

/// Which counted component an [`OpError::PastEnd`] is about.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum CountKind {
    /// `{"r": n}`.
    Retain,
    /// `{"d": n}`.
    Delete,
}

impl fmt::Display for CountKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CountKind::Retain => "Retain",
            CountKind::Delete => "Delete",
        })
    }
}

impl TextOp {
    /// The length of `s` in UTF-16 code units (what JavaScript's `length` says), the unit
    /// every count of an op is in.
    ///
    /// ```
    /// assert_eq!(syncmux::ot::TextOp::utf16_len("😀é"), 3);
    /// ```
    pub fn utf16_len(s: &str) -> u64 {
        // Every character is one unit, or two when UTF-8 needs four bytes for it: count the bytes
        // that start a character (not `10xxxxxx`), plus the four-byte lead bytes. A byte loop
        // the compiler vectorises, rather than decoding characters.
        s.as_bytes()
            .iter()
            .map(|&b| u64::from((b as i8) >= -0x40) + u64::from(b >= 0xF0))
            .sum()
    }

    /// The empty op (it keeps the whole document).
    pub fn new() -> Self {
        TextOp::default()
    }

    /// An op from components, normalized: empty ones dropped, neighbours of one kind merged.
    pub fn from_components(components: impl IntoIterator<Item = Component>) -> Self {
        let mut op = TextOp::new();
        for c in components {
            op.push(c);
        }
        op
    }

    /// Appends a retain.
    #[must_use]
    pub fn retain(mut self, n: u64) -> Self {
        self.push(Component::Retain(n));
        self
    }

    /// Appends an insert.
    #[must_use]
    pub fn insert(mut self, text: impl Into<String>) -> Self {
        self.push(Component::Insert(text.into()));
        self
    }

    /// Appends a delete.
    #[must_use]
    pub fn delete(mut self, n: u64) -> Self {
        self.push(Component::Delete(n));
        self
    }

    /// Appends a component, keeping the op normalized.
    pub fn push(&mut self, component: Component) {
        match (self.components.last_mut(), component) {
            (_, c) if c.is_empty() => {}
            (Some(Component::Retain(a)), Component::Retain(b))
            | (Some(Component::Delete(a)), Component::Delete(b)) => {
                // Saturates: no document is 2^64 units long, so such an op fails to apply.
                *a = a.saturating_add(b);
            }
            (Some(Component::Insert(a)), Component::Insert(b)) => a.push_str(&b),
            (_, c) => self.components.push(c),
        }
    }

    /// Appends inserted text without building a `String` first (transform and compose copy
    /// slices of other ops' inserts).
    fn push_insert(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        match self.components.last_mut() {
            Some(Component::Insert(a)) => a.push_str(text),
            _ => self.components.push(Component::Insert(text.to_owned())),
        }
    }

    /// The components.
    pub fn components(&self) -> &[Component] {
        &self.components
    }

    /// Whether applying the op changes nothing (it only retains, or is empty).
    pub fn is_noop(&self) -> bool {
        self.components
            .iter()
            .all(|c| matches!(c, Component::Retain(_)))
    }

    /// Applies the op to `text`. The part of `text` after the op's last component is kept.
    pub fn apply(&self, text: &str) -> Result<String, OpError> {
        let bytes = text.as_bytes();
        let inserted: usize = self
            .components
            .iter()
            .map(|c| match c {
                Component::Insert(s) => s.len(),
                _ => 0,
            })
            .sum();
        let mut out = String::with_capacity(text.len().saturating_add(inserted));
        let mut pos = 0; // bytes into `text`
        let mut index = 0; // UTF-16 units into `text`
        for c in &self.components {
            let (n, kind) = match c {
                Component::Insert(s) => {
                    out.push_str(s);
                    continue;
                }
                Component::Retain(n) => (*n, CountKind::Retain),
                Component::Delete(n) => (*n, CountKind::Delete),
            };
            let end = advance(bytes, pos, n).map_err(|stop| match stop {
                Stop::End => OpError::PastEnd {
                    index,
                    kind,
                    count: n,
                    len: TextOp::utf16_len(text),
                },
                Stop::Split => OpError::SplitsSurrogatePair { index: index + n },
            })?;
            if kind == CountKind::Retain {
                out.push_str(slice(text, pos, end));
            }
            pos = end;
            index += n;
        }
        out.push_str(slice(text, pos, text.len()));
        Ok(out)
    }

    /// Rewrites this op to apply after `other` (both made on the same document): open-ot's
    /// `transform(self, other, side)`.
    ///
    /// Where `other` deleted, this op's retain or delete vanishes; where it retained, this
    /// op's component stands; its inserts become retains. At a tie between two inserts,
    /// `side` says whose text comes first.
    pub fn transform(&self, other: &TextOp, side: Side) -> TextOp {
        let mut out = TextOp {
            components: Vec::with_capacity(self.components.len() + other.components.len()),
        };
        let mut a = Walk::new(&self.components);
        let mut b = Walk::new(&other.components);
        loop {
            match (a.current(), b.current()) {
                (None, None) => break,
                (Some(Component::Insert(s)), Some(Component::Insert(_))) => {
                    if side == Side::Left {
                        out.push_insert(s);
                        a.next();
                    } else {
                        out.push(Component::Retain(b.len));
                        b.next();
                    }
                }
                (Some(Component::Insert(s)), _) => {
                    out.push_insert(s);
                    a.next();
                }
                (_, Some(Component::Insert(_))) => {
                    out.push(Component::Retain(b.len));
                    b.next();
                }
                // Retain or delete against retain or delete; `None` is the endless retain.
                (ca, cb) => {
                    let n = a.remaining().min(b.remaining());
                    match (ca, cb) {
                        (_, Some(Component::Delete(_))) => {} // other removed it already
                        (Some(Component::Delete(_)), _) => out.push(Component::Delete(n)),
                        _ => out.push(Component::Retain(n)),
                    }
                    a.skip(n);
                    b.skip(n);
                }
            }
        }
        out
    }

    /// The op that does this op and then `other` (made on the document this op produces):
    /// open-ot's `compose(self, other)`.
    ///
    /// Fails only when `other` splits a surrogate pair that this op inserted, which cannot
    /// happen when `other` applies to the document this op produces.
    pub fn compose(&self, other: &TextOp) -> Result<TextOp, OpError> {
        let mut out = TextOp {
            components: Vec::with_capacity(self.components.len() + other.components.len()),
        };
        let mut a = Walk::new(&self.components);
        let mut b = Walk::new(&other.components);
        // Where `b` stands in the document `a` produces, for error messages.
        let mut index = 0u64;
        let split = |index: u64, n: u64| OpError::SplitsSurrogatePair {
            index: index.saturating_add(n),
        };
        loop {
            match (a.current(), b.current()) {
                (None, None) => break,
                // `a`'s deletes happen before `b` sees the document.
                (Some(Component::Delete(n)), _) => {
                    out.push(Component::Delete(*n - a.offset));
                    a.next();
                }
                // `b`'s inserts come after `a`.
                (_, Some(Component::Insert(s))) => {
                    out.push_insert(s);
                    b.next();
                }
                // `a` retains or inserts; `b` retains or deletes (`None`: endless retain).
                (ca, cb) => {
                    let n = a.remaining().min(b.remaining());
                    match (ca, cb) {
                        (Some(Component::Insert(s)), Some(Component::Delete(_))) => {
                            // Inserted, then removed: it never happened. The walk still has
                            // to stay on character boundaries.
                            a.take_insert(s, n).ok_or(split(index, n))?;
                        }
                        (Some(Component::Insert(s)), _) => {
                            let part = a.take_insert(s, n).ok_or(split(index, n))?;
                            out.push_insert(part);
                        }
                        (_, Some(Component::Delete(_))) => out.push(Component::Delete(n)),
                        _ => out.push(Component::Retain(n)),
                    }
                    if !matches!(ca, Some(Component::Insert(_))) {
                        a.skip(n);
                    }
                    b.skip(n);
                    index = index.saturating_add(n);
                }
            }
        }
        Ok(out)
    }

    /// The op that turns `old` into `new`: a retain of their common prefix, a delete and an
    /// insert for what lies between it and their common suffix. Boundaries fall on
    /// characters, so the op never splits a surrogate pair.
    ///
    /// ```
    /// use syncmux::ot::TextOp;
    ///
    /// let op = TextOp::diff("Hello world", "Hello, brave world");
    /// assert_eq!(op, TextOp::new().retain(5).insert(", brave"));
    /// assert_eq!(op.apply("Hello world")?, "Hello, brave world");
    /// # Ok::<(), syncmux::ot::OpError>(())
    /// ```
    pub fn diff(old: &str, new: &str) -> TextOp {
        let mut prefix = old
            .bytes()
            .zip(new.bytes())
            .take_while(|(x, y)| x == y)
            .count();
        // The common bytes end inside a character at most: back up to its start. A boundary
        // of `old` there is one of `new` too, since the bytes before it are the same.
        while !old.is_char_boundary(prefix) {
            prefix -= 1;
        }
        let (old_rest, new_rest) = (slice(old, prefix, old.len()), slice(new, prefix, new.len()));
        let mut suffix = old_rest
            .bytes()
            .rev()
            .zip(new_rest.bytes().rev())
            .take_while(|(x, y)| x == y)
            .count();
        while !old_rest.is_char_boundary(old_rest.len() - suffix) {
            suffix -= 1;
        }
        let deleted = slice(old_rest, 0, old_rest.len() - suffix);
        let inserted = slice(new_rest, 0, new_rest.len() - suffix);
        TextOp::new()
            .retain(TextOp::utf16_len(slice(old, 0, prefix)))
            .delete(TextOp::utf16_len(deleted))
            .insert(inserted)
    }

    /// The op from its JSON form (open-ot's `checkOp`, and counts must be non-negative
    /// integers), normalized.
    pub fn from_json(value: Value) -> Result<TextOp, OpError> {
        // A `Value` cannot fail to deserialize: every shape is an op or an `OpError`.
        checked::Checked
            .deserialize(value)
            .unwrap_or(Err(OpError::NotAnArray))
    }

    /// [`from_json`](Self::from_json) of JSON text, read straight into the op (no `Value`
    /// tree): text that is not JSON is [`OpError::NotAnArray`].
    pub fn from_json_str(json: &str) -> Result<TextOp, OpError> {
        // From bytes, as frames are read: one reader's code, not two.
        let mut de = serde_json::Deserializer::from_slice(json.as_bytes());
        match checked::Checked.deserialize(&mut de) {
            Ok(op) if de.end().is_ok() => op,
            _ => Err(OpError::NotAnArray),
        }
    }

    /// The op's JSON text, as open-ot writes it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("invariant: a TextOp serialises to JSON")
    }
}

impl Serialize for Component {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        match self {
            Component::Retain(n) => map.serialize_entry("r", n)?,
            Component::Insert(s) => map.serialize_entry("i", s)?,
            Component::Delete(n) => map.serialize_entry("d", n)?,
        }
        map.end()
    }
}

impl Serialize for TextOp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.components.len()))?;
        for c in &self.components {
            seq.serialize_element(c)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for TextOp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked::Checked
            .deserialize(deserializer)?
            .map_err(D::Error::custom)
    }
}

/// The rules of [`TextOp::from_json`] as a serde visitor, so that an op is read from JSON
/// text without a `Value` tree (which also keeps `Value`'s code out of the browser's OT
/// client) and from a `Value` alike. An op that breaks them is an `OpError`, a value of the
/// visitor's, not a deserializer error: the rest of the op is skipped, not failed.
mod checked {
    use core::fmt;

    use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess};

    use super::{Component, OpError, TextOp};

    /// The op, or why it is not one.
    pub(super) struct Checked;

    impl<'de> DeserializeSeed<'de> for Checked {
        type Value = Result<TextOp, OpError>;

        fn deserialize<D: Deserializer<'de>>(
            self,
            deserializer: D,
        ) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_any(self)
        }
    }

    /// Anything but an array is not an op.
    macro_rules! not {
        ($outcome:expr; $($name:ident: $ty:ty),*) => {
            $(fn $name<E: de::Error>(self, _: $ty) -> Result<Self::Value, E> {
                Ok(Err($outcome))
            })*
        };
    }

    impl<'de> de::Visitor<'de> for Checked {
        type Value = Result<TextOp, OpError>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an op")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut op = TextOp::new();
            while let Some(component) = seq.next_element_seed(OneComponent)? {
                match component {
                    Ok(component) => op.push(component),
                    Err(e) => {
                        while seq.next_element::<IgnoredAny>()?.is_some() {}
                        return Ok(Err(e));
                    }
                }
            }
            Ok(Ok(op))
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            IgnoredAny.visit_map(map)?;
            Ok(Err(OpError::NotAnArray))
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Err(OpError::NotAnArray))
        }

        not!(OpError::NotAnArray; visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str);
    }

    /// One component, or why it is not one.
    struct OneComponent;

    impl<'de> DeserializeSeed<'de> for OneComponent {
        type Value = Result<Component, OpError>;

        fn deserialize<D: Deserializer<'de>>(
            self,
            deserializer: D,
        ) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_any(self)
        }
    }

    impl<'de> de::Visitor<'de> for OneComponent {
        type Value = Result<Component, OpError>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a component")
        }

        /// Exactly one of `i` (a string), `r` and `d` (non-negative integers); other keys
        /// are ignored, and the last of a repeated key counts.
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let (mut i, mut r, mut d) = (None, None, None);
            while let Some(key) = map.next_key::<Key>()? {
                match key {
                    Key::Insert => i = Some(map.next_value::<Scalar>()?),
                    Key::Retain => r = Some(map.next_value::<Scalar>()?),
                    Key::Delete => d = Some(map.next_value::<Scalar>()?),
                    Key::Other => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(match (i, r, d) {
                (Some(Scalar::Text(s)), None, None) => Ok(Component::Insert(s)),
                (None, Some(Scalar::Count(n)), None) => Ok(Component::Retain(n)),
                (None, None, Some(Scalar::Count(n))) => Ok(Component::Delete(n)),
                _ => Err(OpError::InvalidComponent),
            })
        }

        /// `typeof` is "object" for these in JavaScript: open-ot fails them later.
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            IgnoredAny.visit_seq(seq)?;
            Ok(Err(OpError::InvalidComponent))
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Err(OpError::InvalidComponent))
        }

        not!(OpError::ComponentNotAnObject; visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str);
    }

    /// A component's key.
    enum Key {
        Insert,
        Retain,
        Delete,
        Other,
    }

    impl<'de> de::Deserialize<'de> for Key {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Key, D::Error> {
            struct Name;
            impl de::Visitor<'_> for Name {
                type Value = Key;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a key")
                }
                fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                    Ok(match key {
                        "i" => Key::Insert,
                        "r" => Key::Retain,
                        "d" => Key::Delete,
                        _ => Key::Other,
                    })
                }
            }
            deserializer.deserialize_str(Name)
        }
    }

    /// A component's value: a string, a non-negative integer, or anything else.
    enum Scalar {
        Text(String),
        Count(u64),
        Other,
    }

    impl<'de> de::Deserialize<'de> for Scalar {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Scalar, D::Error> {
            struct Any;
            impl<'de> de::Visitor<'de> for Any {
                type Value = Scalar;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a value")
                }
                fn visit_str<E: de::Error>(self, s: &str) -> Result<Scalar, E> {
                    Ok(Scalar::Text(s.to_owned()))
                }
                fn visit_string<E: de::Error>(self, s: String) -> Result<Scalar, E> {
                    Ok(Scalar::Text(s))
                }
                fn visit_u64<E: de::Error>(self, n: u64) -> Result<Scalar, E> {
                    Ok(Scalar::Count(n))
                }
                fn visit_i64<E: de::Error>(self, n: i64) -> Result<Scalar, E> {
                    Ok(u64::try_from(n).map_or(Scalar::Other, Scalar::Count))
                }
                fn visit_f64<E: de::Error>(self, _: f64) -> Result<Scalar, E> {
                    Ok(Scalar::Other)
                }
                fn visit_bool<E: de::Error>(self, _: bool) -> Result<Scalar, E> {
                    Ok(Scalar::Other)
                }
                fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
                    Ok(Scalar::Other)
                }
                fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Scalar, A::Error> {
                    IgnoredAny.visit_seq(seq)?;
                    Ok(Scalar::Other)
                }
                fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Scalar, A::Error> {
                    IgnoredAny.visit_map(map)?;
                    Ok(Scalar::Other)
                }
            }
            deserializer.deserialize_any(Any)
        }
    }
}

/// `&s[start..end]`, for positions the walk found on character boundaries.
fn slice(s: &str, start: usize, end: usize) -> &str {
    s.get(start..end)
        .expect("invariant: text positions are on character boundaries")
}

/// Why [`advance`] stopped short.
enum Stop {
    /// The text ended.
    End,
    /// Stopping would split a surrogate pair (always at the last unit: only a two-unit
    /// character can overshoot, and only by one).
    Split,
}

/// The byte position `n` UTF-16 units after byte `pos` of `bytes` (valid UTF-8, `pos` on a
/// character boundary).
fn advance(bytes: &[u8], mut pos: usize, n: u64) -> Result<usize, Stop> {
    let mut left = n;
    while left > 0 {
        // A run of ASCII is one unit per byte: skip it without decoding.
        let span = usize::try_from(left).unwrap_or(usize::MAX);
        let rest = bytes.get(pos..).unwrap_or_default();
        let run = rest.iter().take(span).take_while(|b| b.is_ascii()).count();
        pos += run;
        left -= run as u64;
        if left == 0 {
            break;
        }
        let Some(&lead) = bytes.get(pos) else {
            return Err(Stop::End);
        };
        let (width, units) = match lead {
            0xC0..=0xDF => (2, 1),
            0xE0..=0xEF => (3, 1),
            _ => (4, 2),
        };
        if units > left {
            return Err(Stop::Split);
        }
        pos += width;
        left -= units;
    }
    Ok(pos)
}

/// A cursor over an op's components, with how much of the current one is consumed. Past the
/// end it stands on the endless retain (`current()` is `None`, `remaining()` is infinite).
struct Walk<'a> {
    components: &'a [Component],
    index: usize,
    /// Units of the current component consumed.
    offset: u64,
    /// Bytes of the current insert consumed (compose takes inserts apart).
    offset_bytes: usize,
    /// The current component's length in units (computed once per component: an insert's
    /// length costs a pass over its text).
    len: u64,
}

impl<'a> Walk<'a> {
    fn new(components: &'a [Component]) -> Self {
        let mut walk = Walk {
            components,
            index: 0,
            offset: 0,
            offset_bytes: 0,
            len: 0,
        };
        walk.enter();
        walk
    }

    fn enter(&mut self) {
        self.offset = 0;
        self.offset_bytes = 0;
        self.len = self.current().map_or(u64::MAX, Component::len);
    }

    fn current(&self) -> Option<&'a Component> {
        self.components.get(self.index)
    }

    fn remaining(&self) -> u64 {
        self.len - self.offset
    }

    fn next(&mut self) {
        if self.index < self.components.len() {
            self.index += 1;
            self.enter();
        }
    }

    /// Consumes `n` units of a retain or delete (nothing, past the end).
    fn skip(&mut self, n: u64) {
        if self.current().is_none() {
            return;
        }
        self.offset += n;
        if self.offset >= self.len {
            self.next();
        }
    }

    /// Consumes `n` units of the current insert `s` and returns them; `None` when that
    /// would split a surrogate pair (`n` is at most what remains, so the text cannot end).
    fn take_insert(&mut self, s: &'a str, n: u64) -> Option<&'a str> {
        let start = self.offset_bytes;
        let end = advance(s.as_bytes(), start, n).ok()?;
        self.offset_bytes = end;
        self.offset += n;
        if self.offset >= self.len {
            self.next();
        }
        Some(slice(s, start, end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(json: &str) -> TextOp {
        TextOp::from_json(serde_json::from_str(json).unwrap()).unwrap()
    }

    #[test]
    fn utf16_lengths() {
        assert_eq!(TextOp::utf16_len(""), 0);
        assert_eq!(TextOp::utf16_len("abc"), 3);
        assert_eq!(TextOp::utf16_len("é"), 1);
        assert_eq!(TextOp::utf16_len("€"), 1);
        assert_eq!(TextOp::utf16_len("😀"), 2);
        assert_eq!(TextOp::utf16_len("😀é"), 3);
        for s in ["", "a😀b", "ü€𝄞x", "日本語"] {
            assert_eq!(TextOp::utf16_len(s), s.encode_utf16().count() as u64);
        }
    }

    #[test]
    fn apply_keeps_the_rest_and_refuses_past_the_end() {
        assert_eq!(op(r#"[{"i":"Hi "}]"#).apply("there").unwrap(), "Hi there");
        assert_eq!(op(r#"[{"r":1},{"d":2}]"#).apply("abcd").unwrap(), "ad");
        assert_eq!(
            op(r#"[{"r":2},{"r":3}]"#)
                .apply("abcd")
                .unwrap_err()
                .to_string(),
            "Operation goes past the end of the string. Index: 0, Retain: 5, Snapshot Length: 4"
        );
        assert_eq!(
            op(r#"[{"r":1},{"d":9}]"#)
                .apply("😀")
                .unwrap_err()
                .to_string(),
            "Operation splits a surrogate pair. Index: 1"
        );
        assert_eq!(
            op(r#"[{"r":2},{"d":9}]"#)
                .apply("😀é")
                .unwrap_err()
                .to_string(),
            "Operation goes past the end of the string. Index: 2, Delete: 9, Snapshot Length: 3"
        );
        assert_eq!(op(r#"[{"r":2},{"d":1}]"#).apply("😀é").unwrap(), "😀");
    }

    #[test]
    fn json_checks_like_open_ot() {
        let err = |s: &str| TextOp::from_json(serde_json::from_str(s).unwrap()).unwrap_err();
        assert_eq!(err(r#"{"i":"x"}"#), OpError::NotAnArray);
        assert_eq!(err("[3]"), OpError::ComponentNotAnObject);
        assert_eq!(err(r#"["x"]"#), OpError::ComponentNotAnObject);
        assert_eq!(err("[null]"), OpError::InvalidComponent);
        assert_eq!(err(r#"[{"x":1}]"#), OpError::InvalidComponent);
        assert_eq!(err(r#"[{"r":-1}]"#), OpError::InvalidComponent);
        assert_eq!(err(r#"[{"r":1.5}]"#), OpError::InvalidComponent);
        assert_eq!(err(r#"[{"i":1}]"#), OpError::InvalidComponent);
        assert_eq!(err(r#"[{"i":"a","r":1}]"#), OpError::InvalidComponent);
        // Normalized: empties dropped, neighbours merged.
        assert_eq!(
            op(r#"[{"r":0},{"r":2},{"r":3},{"i":""},{"d":1},{"d":1}]"#),
            TextOp::new().retain(5).delete(2)
        );
    }

    /// Read from JSON text (no `Value` tree), an op is what `from_json` makes of it, and so
    /// is its error; text that is not JSON is not an op.
    #[test]
    fn json_text_reads_like_a_value() {
        let texts = [
            r#"{"i":"x"}"#,
            "[3]",
            r#"["x"]"#,
            "[null]",
            "[[1]]",
            r#"[{"x":1}]"#,
            r#"[{"r":-1}]"#,
            r#"[{"r":1.5}]"#,
            r#"[{"i":1}]"#,
            r#"[{"i":"a","r":1}]"#,
            r#"[{"i":"a"},3,{"i":"b"}]"#,
            r#"[{"r":0},{"r":2},{"r":3},{"i":""},{"d":1},{"d":1}]"#,
            r#"[{"i":"é\u00e9😀","extra":[1,{"a":2}]},{"d":2}]"#,
            r#"[{"i":"a","i":"b"}]"#,
            "[]",
            "null",
            "true",
            "\"op\"",
        ];
        for text in texts {
            let value = TextOp::from_json(serde_json::from_str(text).unwrap());
            assert_eq!(TextOp::from_json_str(text), value, "{text}");
        }
        assert_eq!(TextOp::from_json_str("[{"), Err(OpError::NotAnArray));
        assert_eq!(TextOp::from_json_str("[] []"), Err(OpError::NotAnArray));
    }

    #[test]
    fn transform_matches_open_ot() {
        // Ties: left puts this op's text first.
        let a = TextOp::new().insert("a");
        let b = TextOp::new().insert("b");
        // (b's insert still becomes a retain after a's: open-ot keeps trailing retains.)
        assert_eq!(
            a.transform(&b, Side::Left),
            TextOp::new().insert("a").retain(1)
        );
        assert_eq!(
            a.transform(&b, Side::Right),
            TextOp::new().retain(1).insert("a")
        );
        // Past its end an op retains: the other's retains come back as a trailing retain.
        let del = TextOp::new().retain(1).delete(2);
        let ins = TextOp::new().retain(2).insert("xy").retain(3);
        assert_eq!(
            del.transform(&ins, Side::Left),
            TextOp::new()
                .retain(1)
                .delete(1)
                .retain(2)
                .delete(1)
                .retain(2)
        );
        assert_eq!(
            ins.transform(&del, Side::Right),
            TextOp::new().retain(1).insert("xy").retain(2)
        );
    }

    #[test]
    fn compose_splits_inserts_on_characters() {
        let a = TextOp::new().insert("a😀b");
        let b = TextOp::new().retain(1).delete(2);
        assert_eq!(a.compose(&b).unwrap(), TextOp::new().insert("ab"));
        let bad = TextOp::new().retain(2).insert("x");
        assert_eq!(
            a.compose(&bad),
            Err(OpError::SplitsSurrogatePair { index: 2 })
        );
    }

    #[test]
    fn diff_stays_on_characters() {
        for (old, new) in [
            ("", ""),
            ("abc", "abc"),
            ("😀", "😁"),
            ("a😀b", "a😁b"),
            ("éa", "èa"),
            ("xx", "x"),
            ("", "new"),
        ] {
            assert_eq!(
                TextOp::diff(old, new).apply(old).unwrap(),
                new,
                "{old} -> {new}"
            );
        }
        assert_eq!(
            TextOp::diff("a😀b", "a😁b"),
            TextOp::new().retain(1).delete(2).insert("😁")
        );
    }
}
