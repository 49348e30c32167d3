//! Opaque JSON values that pass through untouched.

use core::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::wire::PayloadError;

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
        crate::wire::parse_payload(self.0.get().as_bytes())
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
