//! `sim comm`: what sending adapters instead of whole models costs and saves.

use std::path::PathBuf;

use fedsim::comm::{CommInput, Messages};

use super::out::outln;

/// Arguments of `sim comm`.
#[derive(Debug, clap::Args)]
pub struct CommArgs {
    /// A scenario (planned messages) or a run directory (the bytes it sent); or give the
    /// numbers with the flags below.
    pub source: Option<PathBuf>,
    /// Link speed, Mbit/s (10^6 bit/s).
    #[arg(long, default_value_t = 20.0)]
    pub bandwidth_mbps: f64,
    /// Parameters of the whole model (without a scenario or run).
    #[arg(long)]
    pub total_params: Option<u64>,
    /// Trainable (adapter) parameters.
    #[arg(long)]
    pub trainable_params: Option<u64>,
    /// Rounds.
    #[arg(long)]
    pub rounds: Option<u64>,
    /// Clients per round.
    #[arg(long)]
    pub clients_per_round: Option<u64>,
    /// Bytes per parameter on the wire.
    #[arg(long, default_value_t = 4)]
    pub bytes_per_param: u64,
}

/// Run `sim comm`.
pub fn comm(a: CommArgs) -> anyhow::Result<()> {
    let input = match &a.source {
        Some(p) if p.is_dir() => CommInput::from_run(p, a.bandwidth_mbps)?,
        Some(p) => {
            let s = fedsim::Scenario::load(p, &[])?;
            let layout = fedsim::model::AdapterLayout::new(&s.model, &s.lora);
            let adapter = fedsim::model::AdapterSet::new(
                std::sync::Arc::new(layout.clone()),
                vec![0.0; layout.len()],
            );
            let clients = s.data.clients;
            CommInput {
                total_params: (s.model.num_parameters() + layout.len()) as u64,
                trainable_params: layout.len() as u64,
                bytes_per_param: 4,
                // The real payload: safetensors, header included.
                adapter_message_bytes: Some(adapter.to_safetensors()?.len() as u64),
                upload_message_bytes: fedsim::compress::CompressionRecord::of(
                    s.compression,
                    std::sync::Arc::new(layout.clone()),
                )
                .map(|c| c.bytes_per_upload),
                messages: Messages::Planned {
                    rounds: s.rounds as u64,
                    clients_per_round: s.sampling.sample_size(clients) as u64,
                },
                bandwidth_mbps: a.bandwidth_mbps,
            }
        }
        None => {
            let need = |v: Option<u64>, flag: &str| {
                v.ok_or_else(|| anyhow::anyhow!("give a scenario, a run directory, or {flag}"))
            };
            CommInput {
                total_params: need(a.total_params, "--total-params")?,
                trainable_params: need(a.trainable_params, "--trainable-params")?,
                bytes_per_param: a.bytes_per_param,
                adapter_message_bytes: None,
                upload_message_bytes: None,
                messages: Messages::Planned {
                    rounds: need(a.rounds, "--rounds")?,
                    clients_per_round: need(a.clients_per_round, "--clients-per-round")?,
                },
                bandwidth_mbps: a.bandwidth_mbps,
            }
        }
    };
    outln!("{}", input.compute()?)?;
    Ok(())
}
