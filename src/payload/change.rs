//! The change record (docs/protocol.md section 5).

use serde::de::{self, MapAccess};
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use super::hlc::{set, Hlc};
use super::json::{deserialize_with_visitor, Key, RawJson};

/// One change to one field of one row, as CRDT and OT applications exchange them.
///
/// The transport routes on `table` and orders on `hlc`; every other field passes through
/// untouched. Optional fields and fields this version does not know are kept as their exact
/// JSON text, in arrival order, so a server relays records it does not understand byte for
/// byte. The only normalisation is that `hlc` is always written in object form.
///
/// ```
/// use syncmux::payload::ChangeRecord;
///
/// let json = r#"{"table":"docs","pk":"1","field":"title","crdt_type":"lww","hlc":"5:0:n1","node_id":"n1","value":1.50,"x-trace":[1]}"#;
/// let record: ChangeRecord = serde_json::from_str(json).unwrap();
/// assert_eq!(record.extra[0].0, "x-trace");
/// assert_eq!(
///     serde_json::to_string(&record).unwrap(),
///     r#"{"table":"docs","pk":"1","field":"title","crdt_type":"lww","hlc":{"ts":5,"c":0,"node":"n1"},"node_id":"n1","value":1.50,"x-trace":[1]}"#
/// );
/// ```
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ChangeRecord {
    /// The table (the routing key).
    pub table: String,
    /// The row's primary key.
    pub pk: String,
    /// The field of the row.
    pub field: String,
    /// The CRDT type: an open string (`lww`, `counter`, `set`, `list`, `text`, ...).
    pub crdt_type: String,
    /// When the change was made, stamped by its origin node.
    pub hlc: Hlc,
    /// The node that made the change (may differ from the node that pushed it).
    pub node_id: String,
    /// The new value, for register-like types.
    pub value: Option<RawJson>,
    /// Whether the field (or row) is deleted. A `null` on input reads as absent.
    pub tombstone: Option<bool>,
    /// The counter increment, for counters.
    pub counter_delta: Option<RawJson>,
    /// The set operation, for sets.
    pub set_op: Option<RawJson>,
    /// The list operation, for lists.
    pub list_op: Option<RawJson>,
    /// Every other field, in arrival order.
    pub extra: Vec<(String, RawJson)>,
}

impl ChangeRecord {
    /// A record with the required fields and nothing else.
    pub fn new(
        table: impl Into<String>,
        pk: impl Into<String>,
        field: impl Into<String>,
        crdt_type: impl Into<String>,
        hlc: Hlc,
        node_id: impl Into<String>,
    ) -> ChangeRecord {
        ChangeRecord {
            table: table.into(),
            pk: pk.into(),
            field: field.into(),
            crdt_type: crdt_type.into(),
            hlc,
            node_id: node_id.into(),
            value: None,
            tombstone: None,
            counter_delta: None,
            set_op: None,
            list_op: None,
            extra: Vec::new(),
        }
    }

    /// Sets `value`.
    pub fn with_value(mut self, value: RawJson) -> ChangeRecord {
        self.value = Some(value);
        self
    }
}

impl Serialize for ChangeRecord {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let optional = [
            ("value", &self.value),
            ("counter_delta", &self.counter_delta),
            ("set_op", &self.set_op),
            ("list_op", &self.list_op),
        ];
        let len = 6
            + usize::from(self.tombstone.is_some())
            + optional.iter().filter(|(_, v)| v.is_some()).count()
            + self.extra.len();
        let mut map = serializer.serialize_map(Some(len))?;
        map.serialize_entry("table", &self.table)?;
        map.serialize_entry("pk", &self.pk)?;
        map.serialize_entry("field", &self.field)?;
        map.serialize_entry("crdt_type", &self.crdt_type)?;
        map.serialize_entry("hlc", &self.hlc)?;
        map.serialize_entry("node_id", &self.node_id)?;
        if let Some(value) = &self.value {
            map.serialize_entry("value", value)?;
        }
        if let Some(tombstone) = &self.tombstone {
            map.serialize_entry("tombstone", tombstone)?;
        }
        for (key, value) in &optional[1..] {
            if let Some(value) = value {
                map.serialize_entry(key, value)?;
            }
        }
        for (key, value) in &self.extra {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

deserialize_with_visitor!('de, ChangeRecord, ChangeVisitor, deserialize_map, "a change record object", {
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ChangeRecord, A::Error> {
        let (mut table, mut pk, mut field, mut crdt_type, mut hlc, mut node_id) =
            (None, None, None, None, None, None);
        let (mut value, mut tombstone, mut counter_delta, mut set_op, mut list_op) =
            (None, None, None, None, None);
        let mut extra = Vec::new();
        while let Some(Key(key)) = map.next_key()? {
            match &*key {
                "table" => set(&mut table, "table", map.next_value::<String>()?)?,
                "pk" => set(&mut pk, "pk", map.next_value::<String>()?)?,
                "field" => set(&mut field, "field", map.next_value::<String>()?)?,
                "crdt_type" => set(&mut crdt_type, "crdt_type", map.next_value::<String>()?)?,
                "hlc" => set(&mut hlc, "hlc", map.next_value::<Hlc>()?)?,
                "node_id" => set(&mut node_id, "node_id", map.next_value::<String>()?)?,
                "value" => set(&mut value, "value", map.next_value::<RawJson>()?)?,
                // `null` means absent, as it does to the seed's Go and TypeScript peers.
                "tombstone" => set(
                    &mut tombstone,
                    "tombstone",
                    map.next_value::<Option<bool>>()?,
                )?,
                "counter_delta" => set(
                    &mut counter_delta,
                    "counter_delta",
                    map.next_value::<RawJson>()?,
                )?,
                "set_op" => set(&mut set_op, "set_op", map.next_value::<RawJson>()?)?,
                "list_op" => set(&mut list_op, "list_op", map.next_value::<RawJson>()?)?,
                _ => extra.push((key.into_owned(), map.next_value::<RawJson>()?)),
            }
        }
        let missing = de::Error::missing_field;
        Ok(ChangeRecord {
            table: table.ok_or_else(|| missing("table"))?,
            pk: pk.ok_or_else(|| missing("pk"))?,
            field: field.ok_or_else(|| missing("field"))?,
            crdt_type: crdt_type.ok_or_else(|| missing("crdt_type"))?,
            hlc: hlc.ok_or_else(|| missing("hlc"))?,
            node_id: node_id.ok_or_else(|| missing("node_id"))?,
            value,
            tombstone: tombstone.flatten(),
            counter_delta,
            set_op,
            list_op,
            extra,
        })
    }
});

/// A record as the server's replays see it: whatever form a store answers with (owned,
/// borrowed, or with its encoding kept), the HLC that orders it and its table.
pub(crate) trait HasHlc {
    fn hlc(&self) -> &Hlc;
    fn table(&self) -> &str;
    fn pk(&self) -> &str;
    fn field(&self) -> &str;
}

/// So that a store's records may be owned, borrowed or wrapped alike (`Store::Record`).
impl AsRef<ChangeRecord> for ChangeRecord {
    fn as_ref(&self) -> &ChangeRecord {
        self
    }
}

impl HasHlc for ChangeRecord {
    fn hlc(&self) -> &Hlc {
        &self.hlc
    }
    fn table(&self) -> &str {
        &self.table
    }
    fn pk(&self) -> &str {
        &self.pk
    }
    fn field(&self) -> &str {
        &self.field
    }
}

impl<T: HasHlc + ?Sized> HasHlc for &T {
    fn hlc(&self) -> &Hlc {
        (**self).hlc()
    }
    fn table(&self) -> &str {
        (**self).table()
    }
    fn pk(&self) -> &str {
        (**self).pk()
    }
    fn field(&self) -> &str {
        (**self).field()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_tombstone_reads_as_absent_and_a_wrong_one_is_refused() {
        let json = r#"{"table":"t","pk":"1","field":"f","crdt_type":"lww","hlc":"1:0:a","node_id":"a","tombstone":null}"#;
        let record: ChangeRecord = serde_json::from_str(json).unwrap();
        assert_eq!(record.tombstone, None);
        let json = json.replace("null", "1");
        assert!(serde_json::from_str::<ChangeRecord>(&json).is_err());
        let json = json.replace(r#""tombstone":1"#, r#""tombstone":true,"tombstone":null"#);
        assert!(
            serde_json::from_str::<ChangeRecord>(&json).is_err(),
            "duplicate"
        );
    }
}
