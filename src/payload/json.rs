//! Opaque JSON values that pass through untouched.

use core::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::wire::PayloadError;

/// `Deserialize` for a type that reads itself through a visitor: `deserializer.$how` drives
/// `$visitor`, which expects `$expecting` and has the `visit_*` methods given. Written once
/// for the payload types that do (a key here, an HLC, a change record).
macro_rules! deserialize_with_visitor {
    ($de:lifetime, $ty:ty, $visitor:ident, $how:ident, $expecting:literal, { $($visit:tt)* }) => {
        impl<$de> serde::Deserialize<$de> for $ty {
            fn deserialize<D: serde::Deserializer<$de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer.$how($visitor)
            }
        }

        struct $visitor;

        impl<$de> serde::de::Visitor<$de> for $visitor {
            type Value = $ty;

            fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str($expecting)
            }

            $($visit)*
        }
    };
}
pub(crate) use deserialize_with_visitor;

/// A JSON value kept as its exact text: the transport never parses what it only relays
/// (presence data, room messages, a change's `value`), so numbers of any size and precision
/// and key order survive byte for byte.
#[derive(Clone)]
pub struct RawJson(Box<RawValue>);

impl RawJson {
    /// `null`.
    pub fn null() -> RawJson {
        RawJson::from_serialize(&()).expect("invariant: () serialises")
    }

    /// Validates `json` as one JSON value and keeps its text.
    pub fn from_string(json: String) -> Result<RawJson, PayloadError> {
        RawValue::from_string(json)
            .map(RawJson)
            .map_err(|e| PayloadError::new(format!("not JSON: {e}")))
    }

    /// Serialises `value`.
    pub fn from_serialize<T: Serialize + ?Sized>(value: &T) -> Result<RawJson, PayloadError> {
        serde_json::value::to_raw_value(value)
            .map(RawJson)
            .map_err(|e| PayloadError::new(e.to_string()))
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// Whether this is `null`.
    pub fn is_null(&self) -> bool {
        self.0.get() == "null"
    }

    /// Parses the value into `T`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, PayloadError> {
        crate::wire::Frame::parse_payload(self.0.get().as_bytes())
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Eq for RawJson {}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl fmt::Display for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl Serialize for RawJson {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(RawJson)
    }
}

impl From<Box<RawValue>> for RawJson {
    fn from(raw: Box<RawValue>) -> Self {
        RawJson(raw)
    }
}

/// An object key, borrowed from the input when it can be: serde's `Cow<str>` always copies,
/// which for a change record is a dozen allocations spent on keys alone.
pub(crate) struct Key<'de>(pub(crate) std::borrow::Cow<'de, str>);

deserialize_with_visitor!('de, Key<'de>, KeyVisitor, deserialize_str, "a string key", {
    fn visit_borrowed_str<E: serde::de::Error>(self, key: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(std::borrow::Cow::Borrowed(key)))
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Key<'de>, E> {
        Ok(Key(std::borrow::Cow::Owned(key.to_owned())))
    }

    fn visit_string<E: serde::de::Error>(self, key: String) -> Result<Key<'de>, E> {
        Ok(Key(std::borrow::Cow::Owned(key)))
    }
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_borrowed_unless_escaped() {
        let plain: Key<'_> = serde_json::from_str(r#""table""#).unwrap();
        assert!(matches!(plain.0, std::borrow::Cow::Borrowed("table")));
        let escaped: Key<'_> = serde_json::from_str(r#""t\u0061ble""#).unwrap();
        assert_eq!(escaped.0, "table");
    }
}
