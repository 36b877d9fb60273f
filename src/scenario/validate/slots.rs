//! Checks of the `slots` section: local slots, their threads, and workers on other hosts.

use super::{field_path, Check, Range};
use crate::scenario::file::{ScenarioFile, SlotAssignment, SlotDevice, WorkersSection};
use crate::scenario::ScenarioError;

/// Most local slots, threads per slot, or workers a run may name.
const MAX_SLOTS: usize = 256;

/// The `slots` section: threads per slot and the host's cores.
pub(super) fn check_slots(
    c: &Check<'_>,
    file: &ScenarioFile,
) -> Result<(usize, usize), ScenarioError> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let sl = &file.slots;
    match &sl.workers {
        Some(w) => check_workers(c, w)?,
        None => c.ensure(
            (1..=MAX_SLOTS).contains(&sl.count),
            field_path!(file.slots.count),
            format!(
                "is {}; it must be 1..={MAX_SLOTS} (0 only with slots.workers: every job \
                 then runs on a worker)",
                sl.count
            ),
        )?,
    }
    c.ensure(
        sl.count <= MAX_SLOTS,
        field_path!(file.slots.count),
        format!("is {}; it must be 0..={MAX_SLOTS}", sl.count),
    )?;
    if let SlotDevice::Cuda(i) = sl.device {
        return Err(c.fail(
            field_path!(file.slots.device),
            format!(
                "is Cuda({i}) but this build of fedsim has no GPU support (GPU slots are not \
                 implemented yet); set slots.device: Cpu"
            ),
        ));
    }
    let local = sl.count.max(1);
    c.ensure(
        (1..=local).contains(&sl.client_resources),
        field_path!(file.slots.client_resources),
        format!(
            "is {}; it must be 1..={local} (slots.count): a job cannot take more slots than exist",
            sl.client_resources
        ),
    )?;
    c.ensure(
        sl.count > 0 || sl.assignment == SlotAssignment::FirstFree,
        field_path!(file.slots.assignment),
        "is Pinned, which places jobs on local slots, but slots.count is 0; use FirstFree, or \
         give local slots",
    )?;
    let threads = sl.threads_per_slot.unwrap_or((cores / local).max(1));
    c.ensure(
        (1..=MAX_SLOTS).contains(&threads),
        field_path!(file.slots.threads_per_slot),
        format!("is {threads}; it must be 1..={MAX_SLOTS}"),
    )?;
    Ok((threads, cores))
}

/// `slots.workers`: addresses, the cookie file, the rejoin wait, TLS files.
fn check_workers(c: &Check<'_>, w: &WorkersSection) -> Result<(), ScenarioError> {
    let f = "slots.workers";
    c.ensure(
        (1..=MAX_SLOTS).contains(&w.addrs.len()),
        &format!("{f}.addrs"),
        format!(
            "names {} workers; give 1..={MAX_SLOTS} `host:port` addresses (or set \
             slots.workers: None)",
            w.addrs.len()
        ),
    )?;
    for addr in &w.addrs {
        let ok = addr
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        c.ensure(
            ok,
            &format!("{f}.addrs"),
            format!("has `{addr}`, not a `host:port` address (e.g. 10.0.0.7:7101)"),
        )?;
    }
    if let Some(dup) = w
        .addrs
        .iter()
        .enumerate()
        .find(|(i, a)| w.addrs[..*i].contains(a))
    {
        return Err(c.fail(
            &format!("{f}.addrs"),
            format!("names {} twice; a worker is listed once", dup.1),
        ));
    }
    c.ensure(
        !w.cookie_file.as_os_str().is_empty(),
        &format!("{f}.cookie_file"),
        "is empty: give the cluster's cookie file (e.g. `head -c 24 /dev/urandom | base64 > \
         cluster.cookie`, copied to every worker); it is read when the run starts",
    )?;
    c.finite_in(
        w.rejoin_s,
        Range::closed(0.0, 86_400.0),
        &format!("{f}.rejoin_s"),
    )?;
    if let Some(tls) = &w.tls {
        c.ensure(
            !tls.ca.as_os_str().is_empty(),
            &format!("{f}.tls.ca"),
            "is empty: give the PEM certificate of the authority that signed the workers' \
             certificates",
        )?;
        c.ensure(
            !tls.server_name.is_empty(),
            &format!("{f}.tls.server_name"),
            "is empty: give the name the workers' certificates carry (e.g. fedsim-worker)",
        )?;
    }
    Ok(())
}
