//! Per-client traces in CSV: one row per client,
//!
//! ```text
//! client,flops,up_mbps,down_mbps,latency_s,windows
//! 0,5e10,10,40,0.05,0-3600;7200-10800
//! 1,2e11,50,100,0.02,
//! ```
//!
//! `windows` lists `start-end` intervals in virtual seconds, separated by `;`, when the client
//! is online; empty means always. An optional 7th column `region` (an integer 0..edges) places
//! the client under an edge aggregator (`topology: Hierarchical(assignment: ByRegion, …)`).
//! Every client 0..N−1 appears exactly once. A bad row is an
//! error naming the file, line and column.

use std::path::{Path, PathBuf};

use super::{Bounds, DeviceProfile, Windows};

/// A trace that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The file cannot be read.
    #[error("cannot read trace {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A row or field is malformed.
    #[error("{path}:{line}:{col}: {message}")]
    Row {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column (of the field).
        col: usize,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// Clients missing from the trace.
    #[error("{path}: no row for client {first_missing} ({missing} of {clients} clients missing); every client 0..{clients} needs one row")]
    Missing {
        /// The file.
        path: PathBuf,
        /// Lowest missing id.
        first_missing: usize,
        /// How many are missing.
        missing: usize,
        /// Clients in the scenario.
        clients: usize,
    },
}

/// One client's row.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceRow {
    /// Client id.
    pub client: usize,
    /// Its profile.
    pub profile: DeviceProfile,
    /// Its availability windows.
    pub windows: Windows,
    /// Its region, when the trace has a `region` column.
    pub region: Option<u16>,
}

/// The optional column after `windows`.
const REGION: &str = "region";

const HEADER: [&str; 6] = [
    "client",
    "flops",
    "up_mbps",
    "down_mbps",
    "latency_s",
    "windows",
];

/// Read a trace for `clients` clients, ordered by client id.
///
/// # Errors
/// [`TraceError`] for an unreadable file, a bad header or row (with line and column), a
/// duplicate or out-of-range id, or missing clients.
pub fn read_trace(path: &Path, clients: usize) -> Result<Vec<TraceRow>, TraceError> {
    let text = std::fs::read_to_string(path).map_err(|source| TraceError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let err = |line: usize, col: usize, message: String| TraceError::Row {
        path: path.to_path_buf(),
        line,
        col,
        message,
    };
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (hl, header) = lines.next().ok_or_else(|| {
        err(
            1,
            1,
            format!("empty file; expected the header {}", HEADER.join(",")),
        )
    })?;
    let names: Vec<&str> = header.split(',').map(str::trim).collect();
    let regions = names.len() == HEADER.len() + 1 && names.last() == Some(&REGION);
    let known = names.get(..HEADER.len()) == Some(&HEADER[..]);
    if !known || !(names.len() == HEADER.len() || regions) {
        return Err(err(
            hl + 1,
            1,
            format!(
                "header is {header:?}; expected {} (optionally followed by ,{REGION})",
                HEADER.join(",")
            ),
        ));
    }
    let mut rows: Vec<Option<TraceRow>> = vec![None; clients];
    for (i, line) in lines {
        let row = parse_row(line, clients, regions).map_err(|(col, m)| err(i + 1, col, m))?;
        let c = row.client;
        if rows[c].is_some() {
            return Err(err(i + 1, 1, format!("client {c} appears twice")));
        }
        rows[c] = Some(row);
    }
    let missing: Vec<usize> = (0..clients).filter(|&c| rows[c].is_none()).collect();
    if let Some(&first_missing) = missing.first() {
        return Err(TraceError::Missing {
            path: path.to_path_buf(),
            first_missing,
            missing: missing.len(),
            clients,
        });
    }
    Ok(rows
        .into_iter()
        .map(|r| r.expect("checked above"))
        .collect())
}

/// Parse one row; errors carry the 1-based column of the field.
fn parse_row(line: &str, clients: usize, regions: bool) -> Result<TraceRow, (usize, String)> {
    let mut fields = Vec::new();
    let mut col = 1;
    for f in line.split(',') {
        fields.push((col, f.trim()));
        col += f.chars().count() + 1;
    }
    let width = HEADER.len() + usize::from(regions);
    if fields.len() != width {
        return Err((
            1,
            format!(
                "{} fields; expected {width} ({}{})",
                fields.len(),
                HEADER.join(","),
                if regions { ",region" } else { "" }
            ),
        ));
    }
    let (c0, id) = fields[0];
    let client: usize = id
        .parse()
        .map_err(|_| (c0, format!("client {id:?} is not a non-negative integer")))?;
    if client >= clients {
        return Err((c0, format!("client {client} is out of range: the scenario has {clients} clients (ids 0..{clients})")));
    }
    let positive = |k: usize| -> Result<f64, (usize, String)> {
        let (c, v) = fields[k];
        let x: f64 = v
            .parse()
            .map_err(|_| (c, format!("{} {v:?} is not a number", HEADER[k])))?;
        let b = [Bounds::FLOPS, Bounds::MBPS, Bounds::MBPS, Bounds::LATENCY_S][k - 1];
        if !b.contains(x) {
            return Err((
                c,
                format!(
                    "{} is {v}; it must lie in [{}, {}] (the range every profile is held to)",
                    HEADER[k],
                    crate::fmt::compact(b.min),
                    crate::fmt::compact(b.max)
                ),
            ));
        }
        Ok(x)
    };
    let profile = DeviceProfile {
        flops: positive(1)?,
        up_mbps: positive(2)?,
        down_mbps: positive(3)?,
        latency_s: positive(4)?,
    };
    let (cw, w) = fields[5];
    let windows = parse_windows(cw, w)?;
    let region = regions.then(|| parse_region(fields[6])).transpose()?;
    Ok(TraceRow {
        client,
        profile,
        windows: windows.into(),
        region,
    })
}

/// The region field (at column `cr`): an edge index.
fn parse_region((cr, r): (usize, &str)) -> Result<u16, (usize, String)> {
    r.parse::<u16>().map_err(|_| {
        (
            cr,
            format!("region {r:?} is not an integer in 0..65536 (an edge index)"),
        )
    })
}

/// The availability windows field (at column `cw`): `START-END` pairs in seconds, `;`-separated.
fn parse_windows(cw: usize, w: &str) -> Result<Vec<(f64, f64)>, (usize, String)> {
    let mut windows = Vec::new();
    for part in w.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || {
            (
                cw,
                format!("window {part:?} is not START-END in seconds with START < END"),
            )
        };
        let (a, b) = part.split_once('-').ok_or_else(bad)?;
        let (a, b): (f64, f64) = (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        );
        if !(a.is_finite() && b.is_finite() && 0.0 <= a && a < b) {
            return Err(bad());
        }
        windows.push((a, b));
    }
    Ok(windows)
}
