//! The report's attack section: the comparison table of `sim attack` / `sim study`, each
//! run's ROC curves, membership AUC by score and canary exposure, beside the pretrained
//! control.

use std::fmt::Write as _;
use std::path::PathBuf;

use super::{escape, HtmlReportError, Page};
use crate::attack::scoring::Score;
use crate::attack::{table, AttackReport};
use crate::chart::{bars, Axes};

/// Read `attack.json` of every run that has one.
pub(super) fn read(dirs: &[&PathBuf]) -> Result<Vec<AttackReport>, HtmlReportError> {
    let mut out = Vec::new();
    for d in dirs {
        if let Some(r) = crate::attack::read(d)? {
            out.push(r);
        }
    }
    Ok(out)
}

/// The section.
pub(super) fn section(page: &mut Page, reports: &[AttackReport]) -> Result<(), HtmlReportError> {
    page.section("Attacks: what fine-tuning leaked");
    if reports.is_empty() {
        page.note(
            "Attacks: no run has an attack.json (sim attack RUN_DIR… or sim study adds \
             membership inference, canary exposure and extraction).",
        );
        return Ok(());
    }
    let _ = writeln!(
        page.html,
        "<pre>{}</pre>",
        escape(&table::comparison(reports))
    );
    auc_chart(page, reports)?;
    exposure_chart(page, reports)?;
    for r in reports {
        let title = format!("ROC curves of {}", r.scenario);
        page.chart(&title, table::roc_svg(r))?;
    }
    Ok(())
}

fn auc_chart(page: &mut Page, reports: &[AttackReport]) -> Result<(), HtmlReportError> {
    let categories: Vec<String> = Score::ALL.iter().map(|s| s.label().to_string()).collect();
    let auc = |r: &AttackReport, control: bool| -> Vec<f64> {
        Score::ALL
            .iter()
            .map(|s| {
                let e = r.membership.scores.iter().find(|x| x.score == *s);
                let roc = e.and_then(|e| {
                    if control {
                        e.control.as_ref()
                    } else {
                        Some(&e.roc)
                    }
                });
                roc.map_or(f64::NAN, |x| x.auc)
            })
            .collect()
    };
    let mut series = vec![("pretrained (control)".to_string(), auc(&reports[0], true))];
    series.extend(reports.iter().map(|r| (r.scenario.clone(), auc(r, false))));
    let title = "Membership inference: ROC AUC by score (0.5 = chance)";
    page.chart(
        title,
        bars(
            title,
            Axes {
                x: "score",
                y: "ROC AUC",
            },
            &categories,
            &series,
        ),
    )
}

fn exposure_chart(page: &mut Page, reports: &[AttackReport]) -> Result<(), HtmlReportError> {
    let first = &reports[0];
    let categories: Vec<String> = first
        .canaries
        .iter()
        .map(|c| format!("#{} {}, max {:.1}", c.id, c.kind.label(), c.max_exposure))
        .collect();
    let exposure = |r: &AttackReport, control: bool| -> Vec<f64> {
        (0..categories.len())
            .map(|i| {
                r.canaries.get(i).map_or(f64::NAN, |c| {
                    if control {
                        c.pretrained.exposure
                    } else {
                        c.run.exposure
                    }
                })
            })
            .collect()
    };
    if categories.is_empty() {
        page.note("Canary exposure: the runs planted no canaries (data.canaries).");
        return Ok(());
    }
    let mut series = vec![("pretrained (control)".to_string(), exposure(first, true))];
    series.extend(
        reports
            .iter()
            .map(|r| (r.scenario.clone(), exposure(r, false))),
    );
    let title = "Canary exposure (Carlini et al. 2019)";
    page.chart(
        title,
        bars(
            title,
            Axes {
                x: "canary",
                y: "exposure, bits",
            },
            &categories,
            &series,
        ),
    )
}
