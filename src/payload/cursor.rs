//! Server positions for gapless resume (docs/protocol.md section 7, "Cursors, resume and replay
//! order").

use core::fmt;
use core::str::FromStr;

use crate::wire::PayloadError;

/// A position in a store's history: `"<epoch>.<seq>"` on the wire.
///
/// `seq` grows by one per accepted change; `epoch` changes whenever the history does not
/// continue (a store restart, a retention cut), so a cursor from another epoch is never read as
/// a position in this one. Clients treat cursors as opaque strings; only servers and stores
/// parse them. Ordered by epoch, then seq (only meaningful within one epoch).
///
/// ```
/// use syncmux::payload::Cursor;
///
/// let c: Cursor = "7.42".parse().unwrap();
/// assert_eq!(c, Cursor::new(7, 42));
/// assert_eq!(c.to_string(), "7.42");
/// assert!("7".parse::<Cursor>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Cursor {
    /// Which continuous history this position belongs to.
    pub epoch: u64,
    /// The number of changes accepted in this epoch up to and including this position.
    pub seq: u64,
}

impl Cursor {
    /// A cursor.
    pub const fn new(epoch: u64, seq: u64) -> Cursor {
        Cursor { epoch, seq }
    }
}

/// A string that is not `"<epoch>.<seq>"` is refused as it would be in a payload.
impl FromStr for Cursor {
    type Err = PayloadError;

    fn from_str(s: &str) -> Result<Cursor, PayloadError> {
        let err = || {
            let shown: String = s.chars().take(64).collect();
            PayloadError::new(format!(
                "invalid cursor {shown:?}: expected \"<epoch>.<seq>\""
            ))
        };
        let (epoch, seq) = s.split_once('.').ok_or_else(err)?;
        // `u64::from_str` accepts a leading '+'; a cursor is digits only.
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(epoch) || !digits(seq) {
            return Err(err());
        }
        Ok(Cursor {
            epoch: epoch.parse().map_err(|_| err())?,
            seq: seq.parse().map_err(|_| err())?,
        })
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.epoch, self.seq)
    }
}

/// On the wire a cursor is its string form, `"<epoch>.<seq>"`.
impl serde::Serialize for Cursor {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cursor {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Cursor, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse()
            .map_err(|e: PayloadError| serde::de::Error::custom(e.message()))
    }
}
