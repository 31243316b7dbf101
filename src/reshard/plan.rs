//! What a topology change does to guild ownership: how many guilds move, from where to where.
//!
//! Used by `guildshard plan` before a change and by the benchmarks; the handoff itself asks
//! [`crate::ownership::owner`] guild by guild.

use std::fmt;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::ownership::{owner, GuildId, Topology};

pub use crate::ownership::DISCORD_EPOCH_MS;

/// The count of guilds moving between each pair of ordinals for one topology change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The topology before the change.
    pub from: Topology,
    /// The topology after the change.
    pub to: Topology,
    /// `matrix[a][b]`: guilds owned by `a` before and by `b` after.
    pub matrix: Vec<Vec<u64>>,
}

impl Plan {
    /// Counts, for every guild, its owner before and after.
    pub fn compute(
        guilds: impl IntoIterator<Item = GuildId>,
        from: Topology,
        to: Topology,
    ) -> Self {
        let rows = from.pods.get() as usize;
        let cols = to.pods.get() as usize;
        let mut matrix = vec![vec![0u64; cols]; rows];
        for guild in guilds {
            let a = owner(guild, from).0 as usize;
            let b = owner(guild, to).0 as usize;
            matrix[a][b] += 1;
        }
        Plan { from, to, matrix }
    }

    /// Every guild counted.
    pub fn total(&self) -> u64 {
        self.matrix.iter().flatten().sum()
    }

    /// Guilds whose owner changes.
    pub fn moved(&self) -> u64 {
        let mut moved = 0;
        for (a, row) in self.matrix.iter().enumerate() {
            for (b, count) in row.iter().enumerate() {
                if a != b {
                    moved += count;
                }
            }
        }
        moved
    }

    /// The share of guilds that move, 0.0 when there are none.
    pub fn moved_fraction(&self) -> f64 {
        match self.total() {
            0 => 0.0,
            total => self.moved() as f64 / total as f64,
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} -> {}: {} of {} guilds move ({:.2}%)",
            self.from,
            self.to,
            self.moved(),
            self.total(),
            self.moved_fraction() * 100.0
        )?;
        write!(f, "{:>10}", "from\\to")?;
        for b in 0..self.to.pods.get() {
            write!(f, " {:>9}", b)?;
        }
        writeln!(f)?;
        for (a, row) in self.matrix.iter().enumerate() {
            write!(f, "{a:>10}")?;
            for count in row {
                write!(f, " {count:>9}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// `count` distinct, realistic guild snowflakes (creation times between 2015 and 2026, random
/// worker, process and increment bits), the same for the same `seed`.
pub fn generated_snowflakes(count: usize, seed: u64) -> Vec<GuildId> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // 2015-01-01 .. 2026-01-01 in milliseconds since the Discord epoch.
    let span_ms: u64 = 11 * 365 * 24 * 3600 * 1000;
    let mut ids: Vec<GuildId> = (0..count)
        .map(|_| {
            let ms = rng.gen_range(0..span_ms);
            let low = rng.gen_range(0..(1u64 << 22));
            GuildId((ms << 22) | low)
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    // Collisions are astronomically rare; top up deterministically if one happened.
    while ids.len() < count {
        let next = ids.last().map_or(1, |g| g.0 + 1);
        ids.push(GuildId(next));
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ownership::Strategy;

    #[test]
    fn same_topology_moves_nothing() {
        let t = Topology::new(Strategy::Md5, 4).expect("4");
        let plan = Plan::compute(generated_snowflakes(1000, 1), t, t);
        assert_eq!(plan.total(), 1000);
        assert_eq!(plan.moved(), 0);
    }

    #[test]
    fn generated_snowflakes_are_distinct_and_deterministic() {
        let a = generated_snowflakes(5000, 7);
        assert_eq!(a, generated_snowflakes(5000, 7));
        let mut b = a.clone();
        b.dedup();
        assert_eq!(a.len(), b.len());
        assert!(a.iter().all(|g| g.0 > 1 << 22));
    }
}
