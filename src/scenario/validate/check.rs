//! How a check fails: the file, the field's path, what is wrong — and the ranges settings must
//! lie in, named (open or closed at each end) rather than flagged.

use std::path::Path;

/// The dotted path of a scenario setting, derived from the expression that reads it from the
/// file, so the compiler checks it names a field: `field_path!(file.train.lr_max)` is
/// `"train.lr_max"`. Inside an enum variant or an `Option` the rest follows `=>`:
/// `field_path!(file.partition => Dirichlet.alpha)` is `"partition.Dirichlet.alpha"` (checked up to
/// `file.partition`).
macro_rules! field_path {
    ($root:ident . $first:ident $(. $rest:ident)* $(=> $($inner:ident).+)?) => {{
        let _ = &$root.$first $(.$rest)*;
        concat!(
            stringify!($first)
            $(, ".", stringify!($rest))*
            $($(, ".", stringify!($inner))+)?
        )
    }};
}
pub(super) use field_path;

use super::super::ScenarioError;
use crate::fmt::compact;

/// Where a scenario's checks report failures: its file, and each field's path.
pub(super) struct Check<'a> {
    pub(super) path: &'a Path,
}

impl Check<'_> {
    pub(super) fn fail(&self, field: &str, message: impl Into<String>) -> ScenarioError {
        ScenarioError::Invalid {
            path: self.path.to_path_buf(),
            field: field.to_string(),
            message: message.into(),
        }
    }

    pub(super) fn ensure(
        &self,
        ok: bool,
        field: &str,
        message: impl Into<String>,
    ) -> Result<(), ScenarioError> {
        if ok {
            Ok(())
        } else {
            Err(self.fail(field, message))
        }
    }

    /// `v` is finite and inside `range`.
    pub(super) fn finite_in(&self, v: f64, range: Range, field: &str) -> Result<(), ScenarioError> {
        self.ensure(
            v.is_finite() && range.contains(v),
            field,
            format!("is {}; it must lie in {range}", compact(v)),
        )
    }
}

/// An interval a setting must lie in, each end open or closed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Range {
    lo: f64,
    hi: f64,
    lo_open: bool,
    hi_open: bool,
}

impl Range {
    /// (lo, hi).
    pub(super) const fn open(lo: f64, hi: f64) -> Self {
        Self {
            lo,
            hi,
            lo_open: true,
            hi_open: true,
        }
    }

    /// [lo, hi].
    pub(super) const fn closed(lo: f64, hi: f64) -> Self {
        Self {
            lo,
            hi,
            lo_open: false,
            hi_open: false,
        }
    }

    /// (lo, hi]: above `lo`, up to `hi`.
    pub(super) const fn open_closed(lo: f64, hi: f64) -> Self {
        Self {
            lo,
            hi,
            lo_open: true,
            hi_open: false,
        }
    }

    /// [lo, hi): from `lo`, below `hi`.
    pub(super) const fn closed_open(lo: f64, hi: f64) -> Self {
        Self {
            lo,
            hi,
            lo_open: false,
            hi_open: true,
        }
    }

    fn contains(self, v: f64) -> bool {
        (if self.lo_open {
            v > self.lo
        } else {
            v >= self.lo
        }) && (if self.hi_open {
            v < self.hi
        } else {
            v <= self.hi
        })
    }
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}{}, {}{}",
            if self.lo_open { "(" } else { "[" },
            compact(self.lo),
            compact(self.hi),
            if self.hi_open { ")" } else { "]" }
        )
    }
}
