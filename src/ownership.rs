//! Which gateway pod owns which guild: the one place in the crate that computes it.
//!
//! Level 0: depends on nothing else in the crate. The gateway filter, the HTTP router, the
//! `owner` and `plan` commands and the resharding handoff all call [`owner`]; nothing else
//! hashes a guild id.
//!
//! Two strategies exist:
//! - [`Strategy::Md5`], the design's contract: `u32::from_be_bytes(md5(id)[0..4]) % N`, where
//!   `id` is the guild id as decimal ASCII. It is byte-compatible with the TypeScript reference
//!   `crypto.createHash('md5').update(id).digest().readUInt32BE(0) % N`.
//! - [`Strategy::Jump`], Lamping–Veach jump consistent hashing of `u64::from_be_bytes(md5[0..8])`.
//!   Growing from N to N+1 pods moves about 1/(N+1) of the guilds, all to the new ordinal,
//!   where modulo hashing moves about N/(N+1) of them.
//!
//! Events that carry no guild (DMs, `USER_UPDATE`) belong to ordinal 0.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

/// Discord's epoch (2015-01-01T00:00:00Z) in Unix milliseconds: a snowflake's top 42 bits count
/// milliseconds since then.
pub const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;

/// A Discord guild id (a snowflake).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GuildId(pub u64);

impl fmt::Display for GuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The largest guild id accepted from outside: ids are stored as SQLite integers (i64), and
/// Discord's snowflakes stay far below this (it is reached in the year 2084).
pub const MAX_GUILD_ID: u64 = i64::MAX as u64;

/// Why a guild id could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid guild id {input:?}: expected a decimal snowflake no larger than {MAX_GUILD_ID}")]
pub struct ParseGuildIdError {
    input: String,
}

impl GuildId {
    /// `id` when it is within the range a guild id can have ([`MAX_GUILD_ID`]): what ids that
    /// arrive already parsed (a Discord payload read by another library) go through.
    ///
    /// # Errors
    /// [`ParseGuildIdError`] above [`MAX_GUILD_ID`].
    pub fn checked(id: u64) -> Result<Self, ParseGuildIdError> {
        if id > MAX_GUILD_ID {
            return Err(ParseGuildIdError {
                input: id.to_string(),
            });
        }
        Ok(GuildId(id))
    }
}

impl FromStr for GuildId {
    type Err = ParseGuildIdError;

    /// Accepts the canonical decimal form only (digits, no sign, no leading zeros except "0"), so
    /// that the string hashed is the one Discord sends and two spellings never own differently,
    /// and only up to [`MAX_GUILD_ID`], so that every id accepted can be stored. (Ownership
    /// itself is defined for every `u64`: construct `GuildId` directly for that.)
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseGuildIdError {
            input: s.to_owned(),
        };
        let canonical = !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_digit())
            && (s == "0" || !s.starts_with('0'));
        if !canonical {
            return Err(err());
        }
        s.parse::<u64>()
            .ok()
            .and_then(|id| GuildId::checked(id).ok())
            .ok_or_else(err)
    }
}

/// A gateway pod's StatefulSet ordinal (`gateway-<ordinal>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Ordinal(pub u32);

impl fmt::Display for Ordinal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The hash used to map guilds to ordinals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// `md5(id)[0..4]` as big-endian u32, modulo N (the reference's contract).
    #[default]
    Md5,
    /// Jump consistent hash of `md5(id)[0..8]` as big-endian u64.
    Jump,
}

impl Strategy {
    /// The name used in configuration and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Md5 => "md5",
            Strategy::Jump => "jump",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a strategy name was not recognised.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown shard strategy {0:?}: expected \"md5\" or \"jump\"")]
pub struct ParseStrategyError(String);

impl FromStr for Strategy {
    type Err = ParseStrategyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "md5" => Ok(Strategy::Md5),
            "jump" => Ok(Strategy::Jump),
            other => Err(ParseStrategyError(other.to_owned())),
        }
    }
}

/// The shape of the cluster: how guilds are hashed and over how many pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Topology {
    /// The hash in use.
    pub strategy: Strategy,
    /// The number of gateway pods that own guilds (`NUM_GATEWAY_PODS`).
    pub pods: NonZeroU32,
}

impl Topology {
    /// A topology of `pods` pods; `None` when `pods` is zero.
    pub fn new(strategy: Strategy, pods: u32) -> Option<Self> {
        NonZeroU32::new(pods).map(|pods| Topology { strategy, pods })
    }

    /// Whether `ordinal` owns guilds under this topology (standby pods, `ordinal >= N`, do not).
    pub fn is_member(&self, ordinal: Ordinal) -> bool {
        ordinal.0 < self.pods.get()
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.strategy, self.pods)
    }
}

/// The ordinal that owns `guild` under `topology`.
pub fn owner(guild: GuildId, topology: Topology) -> Ordinal {
    let digest = md5_of_id(guild);
    let n = topology.pods.get();
    match topology.strategy {
        Strategy::Md5 => {
            let head = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
            Ordinal(head % n)
        }
        Strategy::Jump => {
            let mut head = [0u8; 8];
            head.copy_from_slice(&digest[..8]);
            Ordinal(jump_consistent_hash(u64::from_be_bytes(head), n))
        }
    }
}

/// The ordinal that handles an event: its guild's owner, or ordinal 0 for guild-less events.
pub fn owner_of_event(guild: Option<GuildId>, topology: Topology) -> Ordinal {
    guild.map_or(Ordinal(0), |g| owner(g, topology))
}

/// The md5 digest of the guild id's decimal ASCII form.
fn md5_of_id(guild: GuildId) -> [u8; 16] {
    // A u64 has at most 20 decimal digits; format without allocating.
    let mut buf = [0u8; 20];
    let mut n = guild.0;
    let mut start = buf.len();
    loop {
        start -= 1;
        // The remainder is < 10, so the cast cannot truncate.
        buf[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    Md5::digest(&buf[start..]).into()
}

/// Lamping and Veach, "A Fast, Minimal Memory, Consistent Hash Algorithm" (2014), figure 1.
fn jump_consistent_hash(mut key: u64, buckets: u32) -> u32 {
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        // (key >> 33) + 1 is in 1..=2^31, so the f64 arithmetic is exact enough, as in the paper.
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    // b is in 0..buckets, which fits a u32.
    b as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(strategy: Strategy, pods: u32) -> Topology {
        Topology::new(strategy, pods).expect("non-zero pods")
    }

    #[test]
    fn parses_only_canonical_ids() {
        assert_eq!("0".parse::<GuildId>(), Ok(GuildId(0)));
        assert_eq!(
            "9223372036854775807".parse::<GuildId>(),
            Ok(GuildId(9_223_372_036_854_775_807))
        );
        assert_eq!(
            "81384788765712384".parse::<GuildId>(),
            Ok(GuildId(81_384_788_765_712_384))
        );
        for bad in [
            "",
            "-1",
            "+1",
            "01",
            "1e3",
            " 1",
            "18446744073709551616",
            "18446744073709551615",
            "9223372036854775808",
            "abc",
        ] {
            assert!(bad.parse::<GuildId>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn md5_digest_of_decimal_form() {
        // md5("0") = cfcd2084...
        assert_eq!(md5_of_id(GuildId(0))[..4], [0xcf, 0xcd, 0x20, 0x84]);
        assert_eq!(
            md5_of_id(GuildId(u64::MAX)),
            <[u8; 16]>::from(Md5::digest(u64::MAX.to_string().as_bytes()))
        );
    }

    #[test]
    fn guildless_events_go_to_ordinal_zero() {
        for strategy in [Strategy::Md5, Strategy::Jump] {
            assert_eq!(owner_of_event(None, topo(strategy, 7)), Ordinal(0));
        }
    }

    #[test]
    fn one_pod_owns_everything() {
        for id in [0, 1, 42, u64::MAX] {
            assert_eq!(owner(GuildId(id), topo(Strategy::Md5, 1)), Ordinal(0));
            assert_eq!(owner(GuildId(id), topo(Strategy::Jump, 1)), Ordinal(0));
        }
    }

    #[test]
    fn standby_ordinals_are_not_members() {
        let t = topo(Strategy::Md5, 3);
        assert!(t.is_member(Ordinal(2)));
        assert!(!t.is_member(Ordinal(3)));
    }
}
