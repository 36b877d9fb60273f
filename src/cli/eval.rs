//! `sim eval`: PubMedQA accuracy and answers to prompts, for a pretrained model and with an
//! adapter, side by side; held-out loss of a run from its summary.

use std::path::PathBuf;

use anyhow::Context;
use candle_core::Device;
use fedsim::eval::{pubmedqa, Evaluator, PubMedQaResult};
use fedsim::model::pretrained::Pretrained;
use fedsim::model::{peft, BaseModel, LoraVars};
use fedsim::report::Summary;
use serde::Serialize;

use super::out::outln;

/// Arguments of `sim eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// A GGUF file, a Hugging Face directory or a known model name (or take it from --run).
    #[arg(long)]
    pub model: Option<String>,
    /// A run directory: its pretrained base (model.json), its adapter, its held-out loss.
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// An adapter directory (PEFT format: LoRA, DoRA, IA³, prompt or prefix tuning) to evaluate
    /// beside the pretrained model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// PubMedQA's ori_pqal.json.
    #[arg(long)]
    pub pubmedqa: Option<PathBuf>,
    /// A PubMedQA split (test_ground_truth.json: PMID -> answer) to keep only its items.
    #[arg(long)]
    pub split: Option<PathBuf>,
    /// A classification task scored by constrained likelihood (with --data).
    #[arg(long, value_enum, requires = "data")]
    pub task: Option<super::eval_task::TaskName>,
    /// The task's file: fpb_test.jsonl, fiqa_test.jsonl, tfns_valid.csv, ori_pqal.json.
    #[arg(long, requires = "task")]
    pub data: Option<PathBuf>,
    /// Score a stratified subset of N task items (seed 0) instead of all.
    #[arg(long, requires = "task")]
    pub subset: Option<usize>,
    /// Also score the task by generation (greedy answer, FinGPT's parsing).
    #[arg(long, requires = "task")]
    pub generation: bool,
    /// Sequences per forward pass when scoring a task.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Score only the first N items (PMID order).
    #[arg(long)]
    pub limit: Option<usize>,
    /// A prompt to answer with every model (repeatable).
    #[arg(long = "prompt")]
    pub prompts: Vec<String>,
    /// New tokens for answers (PubMedQA generation uses 16).
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// How the frozen base is held: F32, Bf16, Q8_0, Q4_1 or Stored (scenario
    /// `model.base_precision`).
    #[arg(long, default_value = "F32")]
    pub base_precision: fedsim::model::BasePrecision,
    /// What a Q8_0/Q4_1 base's matmuls take when generating answers (--generation) and in
    /// PubMedQA's log-likelihood scoring: F32 (the training forward's numbers) or Int8 (8-bit
    /// blocks, as llama.cpp: about twice as fast, logits slightly off).
    #[arg(long, default_value = "F32")]
    pub inference_activations: fedsim::model::InferenceActivations,
    /// What a packed base's batched matmuls (the held-out loss, the constrained scoring of a
    /// task) multiply in: F32 or Bf16 (scenario `model.compute_dtype`).
    #[arg(long, default_value = "F32")]
    pub compute_dtype: fedsim::model::ComputeDtype,
    /// Where eval.json goes (default: the run directory with --run, else ./eval.json).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Serialize)]
struct ModelEval {
    model: String,
    task: Option<super::eval_task::ModelTask>,
    pubmedqa: Option<PubMedQaResult>,
    answers: Vec<(String, String)>,
}

#[derive(Serialize)]
struct EvalFile {
    /// A stop request (a signal) ended the evaluation early: what is here was complete.
    interrupted: bool,
    model_path: PathBuf,
    held_out: Option<serde_json::Value>,
    models: Vec<ModelEval>,
}

fn run_base(run: &std::path::Path) -> anyhow::Result<String> {
    let path = run.join("model.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{}: no model.json — the run's base was generated, not pretrained; give --model",
            path.display()
        )
    })?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    v["path"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("{}: no path", path.display()))
}

/// Run `sim eval`.
pub fn eval(a: EvalArgs) -> anyhow::Result<()> {
    let spec = match (&a.model, &a.run) {
        (Some(m), _) => m.clone(),
        (None, Some(r)) => run_base(r)?,
        (None, None) => anyhow::bail!("give --model or --run"),
    };
    let source = Pretrained::open(&spec)?;
    let path = source.path().to_path_buf();
    let tokenizer = source.tokenizer()?;
    let models = models(&a, &source)?;
    if a.split.is_some()
        && a.pubmedqa.is_none()
        && a.task != Some(super::eval_task::TaskName::Pubmedqa)
    {
        anyhow::bail!("--split keeps a PubMedQA split: give it with --pubmedqa or --task pubmedqa");
    }
    let items = pubmedqa_items(&a)?;
    let task = task_plan(&a)?;
    // Signals are heard after every item and answer; the runtime only listens for them.
    let runtime = super::run::runtime()?;
    let shutdown = super::run::stop_on_signals_saying(&runtime, super::run::SCORING)?;
    let stopped = || shutdown.level() >= fedsim::StopLevel::FinishRound;
    let mut out = Vec::new();
    for (name, model) in &models {
        if stopped() {
            break;
        }
        let ev = Evaluator {
            model,
            tokenizer: &tokenizer,
            template: source.chat_template().unwrap_or_default(),
            answer_tokens: 16,
        };
        let mut m = evaluate(name, &ev, items.as_deref(), &a, &stopped)?;
        if let Some(t) = &task {
            m.task = Some(t.score(name, model, &tokenizer, &stopped)?);
        }
        out.push(m);
    }
    let interrupted = stopped();
    print_results(&out)?;
    if let Some(t) = &task {
        let scored: Vec<&super::eval_task::ModelTask> =
            out.iter().filter_map(|m| m.task.as_ref()).collect();
        super::eval_task::print(&t.task, &scored)?;
    }
    if interrupted {
        eprintln!(
            "interrupted: the results cover what was complete before the stop (eval.json says \
             \"interrupted\": true; each model's PubMedQA \"items\" of \"planned\")"
        );
    }
    let held_out = a.run.as_deref().map(held_out).transpose()?;
    let file = a
        .out
        .clone()
        .unwrap_or_else(|| a.run.clone().unwrap_or_default().join("eval.json"));
    let json = EvalFile {
        interrupted,
        model_path: path,
        held_out,
        models: out,
    };
    std::fs::write(&file, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("{}: cannot write", file.display()))?;
    outln!("wrote {}", file.display())?;
    Ok(())
}

/// The pretrained model, and with the adapter (`--adapter`, or the run's) merged in.
fn models(a: &EvalArgs, source: &Pretrained) -> anyhow::Result<Vec<(String, BaseModel)>> {
    let adapter = a.adapter.clone().or_else(|| a.run.clone());
    anyhow::ensure!(
        a.compute_dtype == fedsim::model::ComputeDtype::F32
            || a.base_precision != fedsim::model::BasePrecision::F32,
        "--compute-dtype Bf16 multiplies against a packed base: add --base-precision Q8_0 \
         (or Bf16, Q4_1), or drop --compute-dtype"
    );
    let base = super::generate::with_activations(
        source.load_as(&Device::Cpu, a.base_precision)?,
        a.inference_activations,
    )?
    .with_compute_dtype(a.compute_dtype);
    let mut models: Vec<(String, BaseModel)> = Vec::new();
    if let Some(dir) = &adapter {
        let (ad, lora) = peft::load_peft(dir, base.config())?;
        let vars = LoraVars::fixed(&ad, &lora, &Device::Cpu)?;
        models.push((format!("+ {}", dir.display()), base.merged(&vars)?));
    }
    models.insert(0, ("pretrained".to_string(), base));
    Ok(models)
}

/// The task `--task`, `--data`, `--split` and `--subset` ask for.
fn task_plan(a: &EvalArgs) -> anyhow::Result<Option<super::eval_task::TaskPlan>> {
    let (Some(t), Some(d)) = (a.task, &a.data) else {
        return Ok(None);
    };
    let source = super::eval_task::source(t, d.clone(), a.split.clone());
    Ok(Some(super::eval_task::TaskPlan::load(
        &source,
        a.subset,
        a.generation,
        a.batch,
    )?))
}

/// One model's PubMedQA score (when asked) and answers to the prompts, as far as a stop lets
/// them go.
fn evaluate(
    name: &str,
    ev: &Evaluator<'_>,
    items: Option<&[pubmedqa::Item]>,
    a: &EvalArgs,
    stopped: &dyn Fn() -> bool,
) -> anyhow::Result<ModelEval> {
    let pubmedqa = match items {
        Some(items) => Some(ev.pubmedqa(items, &mut |done, total| {
            if done % 10 == 0 || done == total {
                eprintln!("{name}: PubMedQA {done}/{total}");
            }
            if stopped() {
                return Err(fedsim::data::Stopped);
            }
            Ok(())
        })?),
        None => None,
    };
    let mut answers = Vec::new();
    for p in &a.prompts {
        if stopped() {
            break;
        }
        answers.push((p.clone(), ev.answer(p, a.max_tokens)?));
    }
    Ok(ModelEval {
        model: name.to_string(),
        task: None,
        pubmedqa,
        answers,
    })
}

/// The PubMedQA items `--pubmedqa`, `--split` and `--limit` ask for.
fn pubmedqa_items(a: &EvalArgs) -> anyhow::Result<Option<Vec<pubmedqa::Item>>> {
    let Some(p) = &a.pubmedqa else {
        return Ok(None);
    };
    let mut items = pubmedqa::load(p, a.split.as_deref())?;
    if a.limit == Some(0) {
        anyhow::bail!("--limit 0 scores no PubMedQA item; give at least 1");
    }
    items.truncate(a.limit.unwrap_or(items.len()));
    Ok(Some(items))
}

/// A run's held-out losses, printed and as they go into eval.json.
fn held_out(run: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    let s = Summary::read(run)?;
    outln!(
        "held-out loss (the run's evaluation split): pretrained {:.4} nats/token (perplexity {:.2}), after the run {:.4} (perplexity {:.2})",
        s.pretrained_eval_loss, s.pretrained_eval_perplexity, s.final_eval_loss, s.final_eval_perplexity
    )?;
    Ok(serde_json::json!({
        "pretrained_loss": s.pretrained_eval_loss,
        "pretrained_perplexity": s.pretrained_eval_perplexity,
        "final_loss": s.final_eval_loss,
        "final_perplexity": s.final_eval_perplexity,
    }))
}

fn print_results(out: &[ModelEval]) -> anyhow::Result<()> {
    if out.iter().any(|m| m.pubmedqa.is_some()) {
        outln!(
            "{:<40} {:>6} {:>14} {:>14} {:>9} {:>9}",
            "model",
            "items",
            "likelihood",
            "generation",
            "unparsed",
            "majority"
        )?;
        for m in out {
            if let Some(r) = &m.pubmedqa {
                let items = if r.items < r.planned {
                    format!("{}/{}", r.items, r.planned)
                } else {
                    r.items.to_string()
                };
                outln!(
                    "{:<40} {:>6} {:>14.3} {:>14.3} {:>9} {:>9.3}",
                    m.model,
                    items,
                    r.accuracy_likelihood,
                    r.accuracy_generation,
                    r.unparsed,
                    r.majority_baseline
                )?;
            }
        }
        outln!(
            "PubMedQA accuracy (share of items right); majority = always the most common answer"
        )?;
    }
    let prompts = out.iter().map(|m| m.answers.len()).min().unwrap_or(0);
    for j in 0..prompts {
        outln!("\nprompt: {}", out[0].answers[j].0)?;
        for m in out {
            outln!("[{}] {}", m.model, m.answers[j].1)?;
        }
    }
    Ok(())
}
