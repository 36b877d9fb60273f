//! The report's task section: accuracy on the fixed subset per round and per simulated second
//! (so runs of different speeds compare on the clock that matters), and the label counts per
//! client of each run that scored a task (how skewed its partition is).

use std::fmt::Write as _;

use super::{escape, HtmlReportError, Page, Run};
use crate::chart::{bars, lines, Axes, Series};

/// The section.
pub(super) fn section(page: &mut Page, runs: &[Run]) -> Result<(), HtmlReportError> {
    page.section("Task accuracy");
    let scored: Vec<&Run> = runs
        .iter()
        .filter(|r| r.summary.task_eval.is_some())
        .collect();
    if scored.is_empty() {
        page.note("Task accuracy: no run scored a task (a scenario eval section adds it).");
        return Ok(());
    }
    let series = |x: &dyn Fn(&serde_json::Value) -> Option<f64>| -> Vec<Series> {
        scored
            .iter()
            .map(|r| Series {
                label: r.name.clone(),
                points: r
                    .rounds
                    .iter()
                    .filter_map(|v| Some((x(v)?, v["task_accuracy"].as_f64()?)))
                    .collect(),
            })
            .collect()
    };
    table(page, &scored);
    let y = "accuracy on the fixed subset";
    let title = "Task accuracy per round";
    page.chart(
        title,
        lines(
            title,
            Axes { x: "round", y },
            &series(&|v| v["round"].as_f64()),
        ),
    )?;
    let title = "Task accuracy per simulated second";
    let at_end =
        |v: &serde_json::Value| Some(v["sim_start_s"].as_f64()? + v["sim_duration_s"].as_f64()?);
    page.chart(
        title,
        lines(
            title,
            Axes {
                x: "simulated time (s)",
                y,
            },
            &series(&at_end),
        ),
    )?;
    for r in scored {
        label_counts(page, r)?;
    }
    Ok(())
}

/// Final accuracy with its interval, the controls, and time-to-accuracy, per run.
fn table(page: &mut Page, scored: &[&Run]) {
    let mut t = String::from(
        "<table><tr><th>run</th><th>task</th><th>items</th><th>accuracy [95% CI]</th>\
         <th>macro-F1</th><th>pretrained</th><th>majority</th><th>time-to-accuracy</th></tr>\n",
    );
    for r in scored {
        let Some(e) = &r.summary.task_eval else {
            continue;
        };
        let tta = e.time_to_accuracy.as_ref().map_or("-".to_string(), |x| {
            match (x.round, x.sim_seconds, x.bytes_up) {
                (Some(round), Some(secs), Some(up)) => format!(
                    "{}: round {round}, {secs:.1} simulated s, {:.3} MB up",
                    x.target,
                    up as f64 / 1e6
                ),
                _ => format!(
                    "{}: {}",
                    x.target,
                    x.reason.as_deref().unwrap_or("not reached")
                ),
            }
        });
        let _ = writeln!(
            t,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.3} [{:.3}, {:.3}]</td><td>{:.3}</td><td>{}</td><td>{:.3}</td><td>{}</td></tr>",
            escape(&r.name),
            escape(&e.task),
            e.items,
            e.accuracy,
            e.ci95[0],
            e.ci95[1],
            e.macro_f1,
            e.pretrained_accuracy.map_or("-".into(), |a| format!("{a:.3}")),
            e.majority,
            escape(&tta)
        );
    }
    page.html.push_str(&t);
    page.html.push_str("</table>\n");
}

/// Records per client by label (`partitions.json`'s `topics`, which are labels for
/// labelled data).
fn label_counts(page: &mut Page, r: &Run) -> Result<(), HtmlReportError> {
    let Some(parts) = &r.partitions else {
        return Ok(());
    };
    let Some(t) = &r.summary.task_eval else {
        return Ok(());
    };
    let clients: Vec<String> = parts.iter().map(|p| p["client"].to_string()).collect();
    let series: Vec<(String, Vec<f64>)> = t
        .confusion
        .labels
        .iter()
        .map(|l| {
            let counts = parts.iter().map(|p| p["topics"][l].as_f64().unwrap_or(0.0));
            (l.clone(), counts.collect())
        })
        .collect();
    let title = format!("Training records per client by label: {}", r.name);
    page.chart(
        &title,
        bars(
            &title,
            Axes {
                x: "client",
                y: "records",
            },
            &clients,
            &series,
        ),
    )
}
