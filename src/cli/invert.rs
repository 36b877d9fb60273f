//! `sim invert`: the server's activation-inversion attack alone on split runs.

use std::path::PathBuf;

use anyhow::Context;
use fedsim::attack::{inversion, table};

use super::out::out;

/// Arguments of `sim invert`.
#[derive(Debug, clap::Args)]
pub struct InvertArgs {
    /// Run directories of split runs (topology `Split`).
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Member texts whose tokens are attacked, at most.
    #[arg(long, default_value_t = 200)]
    pub members: usize,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
}

/// Run `sim invert`.
pub fn invert(a: InvertArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.members >= 2, "--members must be at least 2");
    anyhow::ensure!(a.batch >= 1, "--batch must be at least 1");
    for dir in &a.runs {
        let inv = inversion::invert_run(dir, a.members, a.batch)
            .with_context(|| format!("inverting {}", dir.display()))?;
        let mut text = format!("{}: wrote inversion.json\n", dir.display());
        table::inversion_lines(&mut text, &inv);
        out!("{text}")?;
    }
    Ok(())
}
