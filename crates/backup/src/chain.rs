//! A destination's restorable history: its snapshots and mutation-log segments, which
//! points in time they can restore, and the plan to restore one.
//!
//! ```text
//!  versions ─────────────────────────────────────────────────────────────▶
//!  snapshots     S1                         S2
//!  log segments    [a ─ b][b+1 ─ c][c+1 ─ d]  [d+1 ─ e]    (gap)   [g ─ h]
//!  restorable    [S1 ──────────────────────────────── e]
//! ```
//! A range starts at a snapshot and ends where the unbroken run of segments after it
//! ends. A point in time resolves to the newest commit at or before it, and only inside
//! a range: after a range's end later commits may exist that the destination never saw,
//! so such a point is refused rather than restored to a guess.

use crate::crypto::{Cipher, Secret};
use crate::dest::Destination;
use crate::log::{read_segments, LogSegment};
use crate::manifest::Descriptor;
use crate::read::{open_descriptor, open_snapshot, snapshots, Snapshot};
use amberdb_error::{Error, Result};
use amberdb_mvcc::format_micros;
use futures::stream::{self, StreamExt};
use serde::Serialize;

/// A span of versions every one of which a destination can restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestorableRange {
    /// The snapshot it starts at.
    pub first_version: u64,
    /// Commit time of that state (µs since the epoch).
    pub first_time_micros: u64,
    /// RFC 3339.
    pub first_time: String,
    /// The last version the logs cover.
    pub last_version: u64,
    /// Commit time of that state (µs).
    pub last_time_micros: u64,
    /// RFC 3339.
    pub last_time: String,
}

/// What a restore to one version reads.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The version restored.
    pub target: u64,
    /// Commit time of that state.
    pub target_time: u64,
    /// The snapshot it starts from.
    pub snapshot: Snapshot,
    /// The segments to replay over it, in version order (only mutations in
    /// `(snapshot version, target]` apply).
    pub segments: Vec<LogSegment>,
}

/// A destination's snapshots and log segments.
#[derive(Debug, Clone)]
pub struct Chain {
    /// The destination's descriptor.
    pub descriptor: Descriptor,
    /// Its key, if encrypted.
    pub cipher: Option<Cipher>,
    /// `(version, commit time µs)` of every complete snapshot, ascending.
    pub snapshots: Vec<(u64, u64)>,
    /// Every log segment, in version order.
    pub segments: Vec<LogSegment>,
}

impl Chain {
    /// Reads a destination's descriptor, snapshot manifests and segment descriptions.
    pub async fn open(dest: &Destination, secret: Option<&Secret>) -> Result<Chain> {
        let (descriptor, cipher) = open_descriptor(dest, secret).await?;
        let versions = snapshots(dest).await?;
        let snaps: Vec<Result<(u64, u64)>> = stream::iter(versions)
            .map(|v| {
                let (dest, cipher) = (dest.clone(), cipher.clone());
                async move { open_snapshot(&dest, v, cipher).await.map(|s| (v, s.manifest.commit_time_micros)) }
            })
            .buffered(8)
            .collect()
            .await;
        let snapshots = snaps.into_iter().collect::<Result<Vec<_>>>()?;
        let segments = read_segments(dest).await?;
        for w in segments.windows(2) {
            if w[1].first_version <= w[0].last_version {
                return Err(Error::InvalidData(format!(
                    "{}: log segments {}..={} and {}..={} overlap",
                    dest.url(),
                    w[0].first_version,
                    w[0].last_version,
                    w[1].first_version,
                    w[1].last_version
                )));
            }
        }
        Ok(Chain { descriptor, cipher, snapshots, segments })
    }

    /// Where a continuous backup resumes, with the commit time there: after the last
    /// log segment — not after a newer snapshot, whose version may lie past versions
    /// the log has not reached yet (resuming there would leave them out) — or after the
    /// newest snapshot if there is no log.
    pub fn resume_point(&self) -> Option<(u64, u64)> {
        self.segments.last().map(|s| (s.last_version, s.last_time())).or_else(|| self.snapshots.last().copied())
    }

    /// Index of the segment holding version `v`, if any.
    fn segment_of(&self, v: u64) -> Option<usize> {
        let i = self.segments.partition_point(|s| s.last_version < v);
        (i < self.segments.len() && self.segments[i].first_version <= v).then_some(i)
    }

    /// The last version restorable from snapshot `s` (the end of the unbroken run of
    /// segments after it), with its time.
    fn run_end(&self, s: (u64, u64)) -> (u64, u64) {
        let Some(mut i) = self.segment_of(s.0 + 1) else { return s };
        while i + 1 < self.segments.len() && self.segments[i + 1].first_version == self.segments[i].last_version + 1 {
            i += 1;
        }
        let seg = &self.segments[i];
        (seg.last_version, seg.last_time())
    }

    /// The restorable ranges, oldest first, merged where they overlap.
    pub fn ranges(&self) -> Vec<RestorableRange> {
        let mut out: Vec<RestorableRange> = Vec::new();
        for &s in &self.snapshots {
            let e = self.run_end(s);
            if let Some(last) = out.last_mut() {
                if s.0 <= last.last_version {
                    if e.0 > last.last_version {
                        (last.last_version, last.last_time_micros, last.last_time) = (e.0, e.1, format_micros(e.1));
                    }
                    continue;
                }
            }
            out.push(RestorableRange {
                first_version: s.0,
                first_time_micros: s.1,
                first_time: format_micros(s.1),
                last_version: e.0,
                last_time_micros: e.1,
                last_time: format_micros(e.1),
            });
        }
        out
    }

    /// If log segments exist past the end of every restorable range (a segment in
    /// between is missing), the version where coverage breaks off.
    pub fn broken_after(&self) -> Option<u64> {
        let end = self.ranges().iter().map(|r| r.last_version).max()?;
        let newest = self.segments.last()?.last_version;
        (newest > end).then_some(end)
    }

    /// The newest restorable version, refusing when the log is broken after it (the
    /// destination holds later commits that cannot be reached: restoring "the latest"
    /// would silently lose them).
    pub fn latest(&self, dest: &Destination) -> Result<u64> {
        if let Some(v) = self.broken_after() {
            return Err(Error::InvalidData(format!(
                "the mutation log in {} is broken after version {v}: later log segments exist but a segment \
                 between them is missing (run `amberdb backup verify`); restore AS OF SYSTEM TIME a point inside \
                 {} to accept losing the later commits",
                dest.url(),
                self.describe_ranges()
            )));
        }
        self.ranges().last().map(|r| r.last_version).ok_or_else(|| {
            Error::InvalidData(format!(
                "{} holds no complete backup (no snapshot has a manifest; an interrupted backup leaves none)",
                dest.url()
            ))
        })
    }

    fn describe_ranges(&self) -> String {
        let r = self.ranges();
        if r.is_empty() {
            return "it holds no complete snapshot".into();
        }
        let spans: Vec<String> = r
            .iter()
            .map(|r| format!("{} .. {} (versions {}..={})", r.first_time, r.last_time, r.first_version, r.last_version))
            .collect();
        format!("its restorable range is {}", spans.join(", "))
    }

    /// The version a restore to time `t` (µs) means: the newest commit at or before it,
    /// inside a restorable range.
    pub fn resolve_time(&self, t: u64) -> Result<u64> {
        let ranges = self.ranges();
        let Some(r) = ranges.iter().rev().find(|r| r.first_time_micros <= t && t <= r.last_time_micros) else {
            let newest = ranges.last().map(|r| r.last_time_micros);
            let why = if self.broken_after().is_some() && newest.is_some_and(|n| t > n) {
                "it is after a break in the mutation log (a segment is missing; run `amberdb backup verify`)"
            } else if newest.is_some_and(|n| t > n) {
                "it is after the newest commit the backup holds (later commits may exist that it never saw)"
            } else {
                "it is outside every restorable range"
            };
            return Err(Error::InvalidInput(format!(
                "cannot restore to {}: {why}; {}",
                format_micros(t),
                self.describe_ranges()
            )));
        };
        let mut best = r.first_version;
        let start = self.segment_of(r.first_version + 1).unwrap_or(self.segments.len());
        for seg in &self.segments[start..] {
            if seg.first_version > r.last_version {
                break;
            }
            for &[v, ct] in &seg.commits {
                if v > r.first_version && v <= r.last_version && ct <= t {
                    best = best.max(v);
                }
            }
        }
        Ok(best)
    }

    /// Plans a restore of `target`, starting from the newest snapshot that reaches it.
    pub async fn plan(&self, dest: &Destination, target: u64) -> Result<Plan> {
        let Some(&(sv, st)) = self.snapshots.iter().rev().find(|&&s| s.0 <= target && self.run_end(s).0 >= target)
        else {
            return Err(Error::InvalidInput(format!("cannot restore version {target}: {}", self.describe_ranges())));
        };
        let snapshot = open_snapshot(dest, sv, self.cipher.clone()).await?;
        let mut target_time = st;
        let mut segments = Vec::new();
        if target > sv {
            let first = self.segment_of(sv + 1).expect("run_end reached past the snapshot, so a segment holds sv+1");
            for seg in &self.segments[first..] {
                if seg.first_version > target {
                    break;
                }
                for &[v, t] in &seg.commits {
                    if v > sv && v <= target {
                        target_time = t;
                    }
                }
                segments.push(seg.clone());
            }
        }
        Ok(Plan { target, target_time, snapshot, segments })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::FORMAT_VERSION;

    fn seg(first: u64, last: u64, prev: u64, commits: &[(u64, u64)]) -> LogSegment {
        LogSegment {
            format_version: FORMAT_VERSION,
            first_version: first,
            last_version: last,
            prev_time_micros: prev,
            commits: commits.iter().map(|&(v, t)| [v, t]).collect(),
            data: None,
            parts: Vec::new(),
        }
    }

    fn chain(snapshots: &[(u64, u64)], segments: Vec<LogSegment>) -> Chain {
        Chain {
            descriptor: Descriptor::new("2026-11-22T00:00:00Z".into(), None),
            cipher: None,
            snapshots: snapshots.to_vec(),
            segments,
        }
    }

    fn span(r: &RestorableRange) -> (u64, u64, u64, u64) {
        (r.first_version, r.last_version, r.first_time_micros, r.last_time_micros)
    }

    #[test]
    fn ranges_run_from_a_snapshot_to_the_end_of_unbroken_log() {
        let c = chain(
            &[(10, 100)],
            vec![seg(8, 12, 90, &[(9, 95), (12, 120)]), seg(13, 20, 120, &[(15, 150)]), seg(21, 30, 150, &[(25, 250)])],
        );
        assert_eq!(c.ranges().iter().map(span).collect::<Vec<_>>(), vec![(10, 30, 100, 250)]);
        assert_eq!(c.resume_point(), Some((30, 250)));
        assert_eq!(c.broken_after(), None);
        // Newest commit at or before the time; the snapshot's own state counts.
        assert_eq!(c.resolve_time(100).unwrap(), 10);
        assert_eq!(c.resolve_time(119).unwrap(), 10);
        assert_eq!(c.resolve_time(120).unwrap(), 12);
        assert_eq!(c.resolve_time(249).unwrap(), 15);
        assert_eq!(c.resolve_time(250).unwrap(), 25);
        assert!(c.resolve_time(99).unwrap_err().to_string().contains("outside every restorable range"));
        assert!(c.resolve_time(251).unwrap_err().to_string().contains("after the newest commit"));
    }

    #[test]
    fn a_missing_segment_ends_the_range_and_blocks_latest() {
        let c = chain(&[(10, 100)], vec![seg(11, 20, 100, &[(15, 150)]), seg(26, 30, 200, &[(28, 280)])]);
        assert_eq!(c.ranges().iter().map(span).collect::<Vec<_>>(), vec![(10, 20, 100, 150)]);
        assert_eq!(c.broken_after(), Some(20));
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = crate::DestConfig { backup_root: dir.path().to_path_buf(), s3: crate::S3Config::default() };
        let dest = Destination::open("x", &cfg, crate::Origin::Cli).expect("dest");
        assert!(c.latest(&dest).unwrap_err().to_string().contains("broken after version 20"));
        assert!(c.resolve_time(290).unwrap_err().to_string().contains("break in the mutation log"));
        // A new snapshot after the gap starts a second range.
        let c = chain(&[(10, 100), (25, 190)], c.segments.clone());
        assert_eq!(c.ranges().iter().map(span).collect::<Vec<_>>(), vec![(10, 20, 100, 150), (25, 30, 190, 280)]);
        assert_eq!(c.latest(&dest).unwrap(), 30);
        assert_eq!(c.resolve_time(200).unwrap(), 25);
        assert!(c.resolve_time(170).is_err(), "inside the gap");
    }

    #[test]
    fn resume_is_after_the_log_not_after_a_newer_snapshot() {
        let c = chain(&[(10, 100), (40, 400)], vec![seg(11, 30, 100, &[(20, 200)])]);
        assert_eq!(c.resume_point(), Some((30, 200)));
        let c = chain(&[(10, 100)], Vec::new());
        assert_eq!(c.resume_point(), Some((10, 100)));
        assert_eq!(c.ranges().iter().map(span).collect::<Vec<_>>(), vec![(10, 10, 100, 100)]);
    }
}
