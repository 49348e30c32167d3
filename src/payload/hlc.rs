//! The hybrid logical clock (docs/protocol.md section 5).

use core::fmt;
use core::str::FromStr;

use serde::de::{self, MapAccess};
use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

use super::json::{deserialize_with_visitor, Key};
use crate::wire::PayloadError;

/// A hybrid logical clock timestamp: `{"ts": <int64 ns>, "c": <uint32>, "node": <string>}`.
///
/// Ordered by `ts`, then `c`, then `node` (the derived order, by field order). On input the
/// string form `"<ts>:<c>:<node>"` of the seed's examples is accepted too; output is always the
/// object form. `ts` is read as an integer, never through a float, so every `i64` survives.
///
/// ```
/// use syncmux::payload::Hlc;
///
/// let a: Hlc = "1706000000000000000:0:node-1".parse().unwrap();
/// let b: Hlc = serde_json::from_str(r#"{"ts":1706000000000000000,"c":1,"node":"node-0"}"#).unwrap();
/// assert!(a < b);
/// assert_eq!(serde_json::to_string(&a).unwrap(), r#"{"ts":1706000000000000000,"c":0,"node":"node-1"}"#);
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Hlc {
    /// Physical time, nanoseconds.
    pub ts: i64,
    /// Logical counter for events within the same `ts`.
    pub c: u32,
    /// The node that stamped it.
    pub node: String,
}

impl Hlc {
    /// An HLC.
    pub fn new(ts: i64, c: u32, node: impl Into<String>) -> Hlc {
        Hlc {
            ts,
            c,
            node: node.into(),
        }
    }
}

/// A string that is not `"<ts>:<c>:<node>"` is refused as it would be in a payload.
impl FromStr for Hlc {
    type Err = PayloadError;

    fn from_str(s: &str) -> Result<Hlc, PayloadError> {
        let err = |reason| {
            let shown: String = s.chars().take(64).collect();
            PayloadError::new(format!(
                "invalid HLC string {shown:?}: expected \"<ts>:<c>:<node>\" ({reason})"
            ))
        };
        // The node id is the rest of the string, so it may itself contain ':'.
        let mut parts = s.splitn(3, ':');
        let ts = parts.next().ok_or_else(|| err("missing ts"))?;
        let c = parts.next().ok_or_else(|| err("missing counter"))?;
        let node = parts.next().ok_or_else(|| err("missing node"))?;
        Ok(Hlc {
            ts: ts.parse().map_err(|_| err("ts is not an int64"))?,
            c: c.parse().map_err(|_| err("counter is not a uint32"))?,
            node: node.to_owned(),
        })
    }
}

impl fmt::Display for Hlc {
    /// The string form, `"<ts>:<c>:<node>"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.ts, self.c, self.node)
    }
}

impl Serialize for Hlc {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Hlc", 3)?;
        s.serialize_field("ts", &self.ts)?;
        s.serialize_field("c", &self.c)?;
        s.serialize_field("node", &self.node)?;
        s.end()
    }
}

deserialize_with_visitor!('de, Hlc, HlcVisitor, deserialize_any,
    r#"an HLC: {"ts": int64, "c": uint32, "node": string} or "<ts>:<c>:<node>""#, {
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Hlc, E> {
        s.parse().map_err(|e: PayloadError| E::custom(e.message()))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Hlc, A::Error> {
        let (mut ts, mut c, mut node) = (None, None, None);
        while let Some(Key(key)) = map.next_key()? {
            match &*key {
                "ts" => set(&mut ts, "ts", map.next_value::<i64>()?)?,
                "c" => set(&mut c, "c", map.next_value::<u32>()?)?,
                "node" => set(&mut node, "node", map.next_value::<String>()?)?,
                _ => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(Hlc {
            ts: ts.ok_or_else(|| de::Error::missing_field("ts"))?,
            c: c.ok_or_else(|| de::Error::missing_field("c"))?,
            node: node.ok_or_else(|| de::Error::missing_field("node"))?,
        })
    }
});

/// Sets a field once; a key seen twice is an error, as serde's derive would say.
pub(crate) fn set<T, E: de::Error>(
    slot: &mut Option<T>,
    name: &'static str,
    v: T,
) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::duplicate_field(name));
    }
    *slot = Some(v);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extremes_survive_both_forms() {
        for ts in [i64::MIN, -1, 0, i64::MAX] {
            let hlc = Hlc::new(ts, u32::MAX, "a:b");
            let json = serde_json::to_string(&hlc).unwrap();
            assert_eq!(serde_json::from_str::<Hlc>(&json).unwrap(), hlc);
            assert_eq!(hlc.to_string().parse::<Hlc>().unwrap(), hlc);
        }
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            r#""1:2""#,
            r#""x:0:n""#,
            r#""1:-1:n""#,
            r#"{"ts":1.5,"c":0,"node":"n"}"#,
            r#"{"ts":1,"c":0}"#,
            r#"{"ts":1,"ts":2,"c":0,"node":"n"}"#,
            r#"{"ts":9223372036854775808,"c":0,"node":"n"}"#,
            "17",
        ] {
            assert!(serde_json::from_str::<Hlc>(bad).is_err(), "{bad}");
        }
    }
}
