//! Tests that need what the crate does not carry — the data in `../shared`, Chromium,
//! Prometheus — under a harness (libtest-mimic) that decides at run time: where a need is
//! missing the test is reported as **ignored**, naming what is missing (so a bare machine's
//! summary line says how many did not run); under `CI=true` a missing need fails the test, as
//! `.ci/run` installs everything.

#[path = "optional/html_report.rs"]
mod html_report;
#[path = "optional/metrics.rs"]
mod metrics;
#[path = "optional/shared_data.rs"]
mod shared_data;
#[allow(dead_code)]
#[path = "smollm2.rs"]
mod smollm2;
#[allow(dead_code)]
#[path = "util.rs"]
mod util;
#[path = "optional/vaes.rs"]
mod vaes;

use libtest_mimic::{Arguments, Failed, Trial};

/// What a test needs beyond the crate.
#[derive(Clone, Copy)]
enum Need {
    /// Nothing.
    Nothing,
    /// A file or directory under `../shared`.
    Shared(&'static str),
    /// A program that answers `--version`.
    Program(&'static str),
    /// A file at this path.
    File(&'static str),
    /// CPU instructions (`is_x86_feature_detected!` names): no installation provides them,
    /// so where they are missing the test is ignored, under CI too.
    Cpu(&'static [&'static str]),
}

impl Need {
    /// What is missing, if anything.
    fn missing(self) -> Option<String> {
        match self {
            Need::Nothing => None,
            Need::Shared(rel) => {
                let p = util::root().join("..").join("shared").join(rel);
                (!p.exists()).then(|| format!("../shared/{rel} not found"))
            }
            Need::Program(name) => std::process::Command::new(name)
                .arg("--version")
                .output()
                .is_err()
                .then(|| format!("{name} not installed (apt-get install prometheus)")),
            Need::File(path) => (!std::path::Path::new(path).exists())
                .then(|| format!("{path} not installed (apt-get install chromium)")),
            Need::Cpu(features) => {
                let lacking: Vec<_> = features.iter().filter(|f| !cpu_has(f)).collect();
                (!lacking.is_empty()).then(|| format!("this CPU lacks {lacking:?}"))
            }
        }
    }
}

/// Whether the CPU has the x86 feature `name`.
fn cpu_has(name: &str) -> bool {
    #[cfg(target_arch = "x86_64")]
    match name {
        "avx512f" => return std::is_x86_feature_detected!("avx512f"),
        "avx512bw" => return std::is_x86_feature_detected!("avx512bw"),
        "vaes" => return std::is_x86_feature_detected!("vaes"),
        "aes" => return std::is_x86_feature_detected!("aes"),
        _ => {}
    }
    let _ = name;
    false
}

/// A trial of `test` that runs when `need` is met, is ignored (saying why) when it is not, and
/// fails under CI when it is not.
fn trial(name: &str, need: Need, test: fn()) -> Trial {
    let missing = need.missing();
    let under_ci = std::env::var_os("CI").is_some() && !matches!(need, Need::Cpu(_));
    match missing {
        Some(why) if !under_ci => {
            eprintln!("ignored {name}: {why}");
            Trial::test(name, || Ok(())).with_ignored_flag(true)
        }
        Some(why) => Trial::test(name, move || {
            Err(Failed::from(format!(
                "{why} under CI: .ci/run must provide it"
            )))
        }),
        None => Trial::test(name, move || {
            std::panic::catch_unwind(test).map_err(|e| {
                let text = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panicked".into());
                Failed::from(text)
            })
        }),
    }
}

/// The harness's arguments, and the test-name filters apart: libtest takes several
/// (`cargo test -- a b` runs tests matching either, in every test binary), libtest-mimic one.
fn arguments() -> (Arguments, Vec<String>) {
    const TAKES_VALUE: [&str; 6] = [
        "--test-threads",
        "--format",
        "--logfile",
        "--color",
        "--skip",
        "-Z",
    ];
    let mut rest = Vec::new();
    let mut filters = Vec::new();
    let mut value_next = false;
    for a in std::env::args() {
        if rest.is_empty() || value_next || a.starts_with('-') {
            value_next = TAKES_VALUE.contains(&a.as_str());
            rest.push(a);
        } else {
            filters.push(a);
        }
    }
    (Arguments::from_iter(rest), filters)
}

fn main() {
    let (args, filters) = arguments();
    const MEDALPACA: Need = Need::Shared("data/medalpaca/medical_meadow_small.json");
    let trials = vec![
        trial(
            "html_report::a_two_run_report_has_a_chart_per_section_and_notes_for_the_rest",
            Need::Nothing,
            html_report::a_two_run_report_has_a_chart_per_section_and_notes_for_the_rest,
        ),
        trial(
            "html_report::the_report_renders_in_a_browser_with_every_chart",
            Need::File(html_report::CHROMIUM),
            html_report::the_report_renders_in_a_browser_with_every_chart,
        ),
        trial(
            "metrics::openmetrics_file_has_every_round_and_imports_with_promtool",
            Need::Program("promtool"),
            metrics::openmetrics_file_has_every_round_and_imports_with_promtool,
        ),
        trial(
            "metrics::every_dashboard_panel_returns_data_from_a_real_prometheus",
            Need::Program("prometheus"),
            metrics::every_dashboard_panel_returns_data_from_a_real_prometheus,
        ),
        trial(
            "secagg::the_vaes_mask_stream_is_the_aes_crates",
            Need::Cpu(&["avx512f", "avx512bw", "vaes", "aes"]),
            vaes::the_vaes_mask_stream_is_the_aes_crates,
        ),
        trial(
            "data::medalpaca_loads_5942_records",
            MEDALPACA,
            shared_data::medalpaca_loads_5942_records,
        ),
        trial(
            "eval::pubmedqa_loads_1000_expert_items_and_the_500_item_test_split",
            Need::Shared("data/pubmedqa/ori_pqal.json"),
            shared_data::pubmedqa_loads_1000_expert_items_and_the_500_item_test_split,
        ),
        trial(
            "data::finance_sources_load_with_their_documented_counts",
            Need::Shared("data/finance/fpb_test.jsonl"),
            shared_data::finance_sources_load_with_their_documented_counts,
        ),
        trial(
            "data::shipped_finance_scenarios_validate",
            Need::Shared("data/finance/fpb_test.jsonl"),
            shared_data::shipped_finance_scenarios_validate,
        ),
        trial(
            "run::medalpaca_dirichlet_run",
            MEDALPACA,
            shared_data::medalpaca_dirichlet_run,
        ),
        trial(
            "smollm2::a_federated_run_on_smollm2_lowers_held_out_loss_and_its_adapter_generates",
            MEDALPACA,
            shared_data::a_federated_run_on_smollm2_lowers_held_out_loss_and_its_adapter_generates,
        ),
        trial(
            "smollm2::shipped_smollm2_scenarios_validate",
            MEDALPACA,
            shared_data::shipped_smollm2_scenarios_validate,
        ),
    ];
    let exact = args.exact;
    let trials = trials
        .into_iter()
        .filter(|t| {
            filters.is_empty()
                || filters.iter().any(|f| {
                    if exact {
                        t.name() == f
                    } else {
                        t.name().contains(f.as_str())
                    }
                })
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
