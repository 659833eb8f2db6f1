//! The tuner's choices saved across processes: a JSON file per card of the
//! fused kernel's plans by (M, K, N bucket), stamped with a fingerprint of the
//! kernel variant table so that a build with other variants ignores it.
use super::{
    block_split_ok, cluster_split_ok, variant_rows, Plan, Split, FUSED_MAX_N, GEMM_VARIANTS,
    MAX_BLOCK_SPLIT, MAX_CLUSTER,
};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One tuned plan: the shape, the N bucket (`ceil(N / 8)`) and the choice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanEntry {
    pub m: usize,
    pub k: usize,
    pub n8: usize,
    pub variant: usize,
    pub sk: u32,
    pub tps: u32,
    /// The split's blocks sum on chip as one cluster ([`Split::cluster`]);
    /// absent in files written before it existed.
    #[serde(default)]
    pub cluster: bool,
    /// The split's warps are one block's, summed in its shared memory
    /// ([`Split::block`]); absent in files written before it existed.
    #[serde(default)]
    pub block: bool,
}

/// The plans of one card.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanCache {
    pub fingerprint: String,
    pub card: String,
    pub plans: Vec<PlanEntry>,
}

/// The variant table's fingerprint (its entries, hashed).
pub fn fingerprint() -> String {
    format!(
        "{:016x}",
        xxhash_rust::xxh3::xxh3_64(format!("{GEMM_VARIANTS:?}").as_bytes())
    )
}

impl PlanEntry {
    /// Whether the entry names a plan this build can launch for its shape.
    pub fn check(&self) -> Result<()> {
        let bad = |why: &str| Err(Error::invalid(format!("plan cache entry {self:?}: {why}")));
        if self.m == 0 || self.k == 0 || !self.m.is_multiple_of(16) || !self.k.is_multiple_of(64) {
            return bad("not a ZipGEMM shape");
        }
        if self.n8 == 0 || self.n8 * 8 > FUSED_MAX_N {
            return bad("N bucket out of range");
        }
        let Some(&(rs, nb, _, _, _)) = GEMM_VARIANTS.get(self.variant) else {
            return bad("no such kernel variant");
        };
        if nb < self.n8 || !self.m.is_multiple_of(variant_rows(self.variant)) {
            return bad("the variant does not fit the shape");
        }
        let kt = (self.k / 64) as u32;
        if self.sk == 0
            || self.tps == 0
            || self.tps.checked_mul(self.sk).is_none_or(|c| c < kt)
            || self.tps.checked_mul(self.sk - 1).is_none_or(|c| c >= kt)
        {
            return bad("the split does not cover the k tiles exactly");
        }
        if self.cluster && !cluster_split_ok(rs, self.sk) {
            return bad(&format!(
                "a clustered split needs the Hopper or warp-independent kernel and \
                 2..={MAX_CLUSTER} splits"
            ));
        }
        if self.block && (self.cluster || !block_split_ok(rs, self.sk)) {
            return bad(&format!(
                "a split inside a block needs the warp-independent kernel and \
                 2..={MAX_BLOCK_SPLIT} splits"
            ));
        }
        Ok(())
    }
    pub fn plan(&self) -> Plan {
        Plan {
            variant: self.variant,
            split: Split {
                sk: self.sk,
                tps: self.tps,
                cluster: self.cluster,
                block: self.block,
            },
        }
    }
}

impl PlanCache {
    /// Read a cache file for `card`: `Ok(None)` when there is none, or it was
    /// written for another card or another variant table; an error when it is
    /// unreadable or names a plan this build cannot launch.
    pub fn load(path: &Path, card: &str) -> Result<Option<PlanCache>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path, e)),
        };
        let c: PlanCache = serde_json::from_str(&text)
            .map_err(|e| Error::invalid(format!("{}: not a plan cache: {e}", path.display())))?;
        if c.card != card || c.fingerprint != fingerprint() {
            return Ok(None);
        }
        for p in &c.plans {
            p.check()
                .map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;
        }
        Ok(Some(c))
    }

    /// Write the cache atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::container::write_bytes_atomic(
            path,
            serde_json::to_string_pretty(self).unwrap().as_bytes(),
        )
    }
}

/// Where plans for `card` are kept: `$ZIPSERV_PLAN_DIR`, else
/// `$XDG_CACHE_HOME/zipserv`, else `~/.cache/zipserv`.
pub fn default_path(card: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("ZIPSERV_PLAN_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("zipserv")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/zipserv")))?;
    let slug: String = card
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    Some(dir.join(format!("plans-{slug}.json")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> PlanEntry {
        let kt = 4096 / 64;
        let s = super::super::split_for(kt, 3);
        PlanEntry {
            m: 4096,
            k: 4096,
            n8: 1,
            variant: 0,
            sk: s.sk,
            tps: s.tps,
            cluster: false,
            block: false,
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/plans.json");
        assert_eq!(PlanCache::load(&p, "card").unwrap(), None);
        let c = PlanCache {
            fingerprint: fingerprint(),
            card: "card".into(),
            plans: vec![entry()],
        };
        c.save(&p).unwrap();
        assert_eq!(PlanCache::load(&p, "card").unwrap(), Some(c.clone()));
        // Another card or another variant table: ignored.
        assert_eq!(PlanCache::load(&p, "other").unwrap(), None);
        let mut stale = c.clone();
        stale.fingerprint = "0".into();
        stale.save(&p).unwrap();
        assert_eq!(PlanCache::load(&p, "card").unwrap(), None);
        // Entries this build cannot launch: an error naming the file.
        for bad in [
            PlanEntry {
                variant: GEMM_VARIANTS.len(),
                ..entry()
            },
            PlanEntry {
                sk: 1,
                tps: 1,
                ..entry()
            },
            PlanEntry { n8: 17, ..entry() },
            // The block-staged kernels cannot sum in a cluster.
            PlanEntry {
                variant: GEMM_VARIANTS.iter().position(|v| v.0 == 1).unwrap(),
                cluster: true,
                ..entry()
            },
            // Nor can any split of more than 8.
            PlanEntry {
                cluster: true,
                sk: 16,
                tps: 4,
                ..entry()
            },
            // Only the warp-independent kernel splits inside a block,
            PlanEntry {
                variant: GEMM_VARIANTS.iter().position(|v| v.0 == 1).unwrap(),
                block: true,
                ..entry()
            },
            // and into 16 warps at most.
            PlanEntry {
                block: true,
                sk: 32,
                tps: 2,
                ..entry()
            },
            PlanEntry { m: 100, ..entry() },
        ] {
            let mut c2 = c.clone();
            c2.plans = vec![bad];
            c2.save(&p).unwrap();
            let e = PlanCache::load(&p, "card").unwrap_err().to_string();
            assert!(e.contains("plans.json"), "{e}");
        }
        std::fs::write(&p, "{ not json").unwrap();
        assert!(PlanCache::load(&p, "card").is_err());
    }

    #[test]
    fn default_path_is_per_card() {
        std::env::set_var("ZIPSERV_PLAN_DIR", "/tmp/zs-plans");
        assert_eq!(
            default_path("NVIDIA H100 80GB HBM3").unwrap(),
            PathBuf::from("/tmp/zs-plans/plans-nvidia-h100-80gb-hbm3.json")
        );
    }
}
