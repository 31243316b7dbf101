//! What a connector reads of a gateway frame before routing it: the opcode, the sequence
//! number, the dispatch name and the guild id. Nothing else is parsed here; the owner parses
//! the dispatch fully, once (DESIGN §6).

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::ownership::GuildId;

/// The routing facts of one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The gateway opcode (0: dispatch).
    pub op: u8,
    /// The dispatch's sequence number.
    pub seq: Option<u64>,
    /// The dispatch name (`t`).
    pub kind: Option<String>,
    /// The guild it belongs to (`d.id` for GUILD_CREATE/UPDATE/DELETE, `d.guild_id` otherwise);
    /// `None` for guild-less dispatches (DMs, READY).
    pub guild: Option<GuildId>,
}

#[derive(Deserialize)]
struct Frame<'a> {
    op: u8,
    #[serde(default)]
    s: Option<u64>,
    #[serde(default, borrow)]
    t: Option<&'a str>,
    #[serde(default, borrow)]
    d: Option<&'a RawValue>,
}

/// Only the two fields a guild id can be in; every other field is skipped unparsed.
#[derive(Deserialize)]
struct GuildFields<'a> {
    #[serde(default, borrow)]
    guild_id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
#[error("unreadable gateway frame: {0}")]
pub struct BadFrame(#[from] serde_json::Error);

/// A snowflake as Discord sends it (a JSON string of digits).
fn snowflake(raw: Option<&RawValue>) -> Option<GuildId> {
    let text = raw?.get().trim_matches('"');
    text.parse().ok().and_then(|id| GuildId::checked(id).ok())
}

/// Reads the routing facts of `frame`.
///
/// # Errors
/// [`BadFrame`] when the frame is not a gateway payload.
pub fn read(frame: &str) -> Result<Envelope, BadFrame> {
    let f: Frame<'_> = serde_json::from_str(frame)?;
    let guild = match (f.t, f.d) {
        (Some(kind), Some(d)) if f.op == 0 && d.get().starts_with('{') => {
            let fields: GuildFields<'_> = serde_json::from_str(d.get())?;
            match kind {
                "GUILD_CREATE" | "GUILD_UPDATE" | "GUILD_DELETE" => snowflake(fields.id),
                _ => snowflake(fields.guild_id),
            }
        }
        _ => None,
    };
    Ok(Envelope {
        op: f.op,
        seq: f.s,
        kind: f.t.map(str::to_owned),
        guild,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guild_is_read_where_each_dispatch_keeps_it() {
        let m = r#"{"op":0,"s":7,"t":"MESSAGE_CREATE","d":{"id":"1","guild_id":"42","content":"hi {\"guild_id\":\"9\"}","author":{"id":"5"}}}"#;
        let e = read(m).expect("frame");
        assert_eq!((e.op, e.seq, e.guild), (0, Some(7), Some(GuildId(42))));
        assert_eq!(e.kind.as_deref(), Some("MESSAGE_CREATE"));
        let g = r#"{"t":"GUILD_CREATE","s":1,"op":0,"d":{"id":"77","name":"x","channels":[]}}"#;
        assert_eq!(read(g).expect("frame").guild, Some(GuildId(77)));
        let dm = r#"{"op":0,"s":2,"t":"MESSAGE_CREATE","d":{"id":"3","channel_id":"4"}}"#;
        assert_eq!(read(dm).expect("frame").guild, None);
        let ack = r#"{"op":11,"d":null}"#;
        assert_eq!(read(ack).expect("frame").op, 11);
    }

    #[test]
    fn a_guild_id_out_of_range_or_not_a_snowflake_is_no_guild() {
        let big = r#"{"op":0,"s":1,"t":"MESSAGE_CREATE","d":{"guild_id":"18446744073709551615"}}"#;
        assert_eq!(read(big).expect("frame").guild, None);
        let odd = r#"{"op":0,"s":1,"t":"MESSAGE_CREATE","d":{"guild_id":12}}"#;
        assert_eq!(read(odd).expect("frame").guild, Some(GuildId(12)));
        assert!(read("not json").is_err());
    }
}
