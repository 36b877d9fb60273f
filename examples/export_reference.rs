//! Writes the fixture that `tests/reference/make_peft_reference.py` scores with Hugging Face
//! transformers + PEFT: a small random Llama base (HF layout) and a random LoRA adapter (PEFT
//! layout), both drawn from fixed seeds, so the test can rebuild them bit for bit.
//!
//! With `--smollm2`, writes instead the PEFT adapter for SmolLM2-135M that
//! `tests/reference/make_smollm2_peft_reference.py` applies to the model made from the GGUF;
//! `--smollm2-ia3`, `--smollm2-prompt` and `--smollm2-prefix` the IA³, prompt tuning and prefix
//! tuning adapters it applies (`tests/reference/smollm2_{ia3,prompt,prefix}_reference.json`).
//!
//! With `--smollm2-dora GGUF`, the DoRA adapter for SmolLM2-135M (its magnitudes come from the
//! base's weights, read from the GGUF).
//!
//! With `--ia3`, `--dora`, `--prompt` or `--prefix`, the same small base with the adapter of
//! that method that `tests/reference/make_method_reference.py` scores, steps and generates from.
//!
//! Run with: cargo run --release --example export_reference -- [FLAG] OUT_DIR

use fedsim::model::reference as r;

const SMOLLM2: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || {
        anyhow::anyhow!("usage: export_reference [--smollm2 | --smollm2-ia3 | --smollm2-prompt | --smollm2-prefix | --smollm2-dora GGUF | --ia3 | --dora | --prompt | --prefix] OUT_DIR")
    };
    let out = std::path::Path::new(args.last().ok_or_else(usage)?);
    let first = args.first().map(String::as_str);
    let cfg = fedsim::model::LlamaConfig::smollm2_135m();
    let smollm2 = match first {
        Some("--smollm2-dora") => {
            let gguf = args.get(1).ok_or_else(usage)?;
            let header = fedsim::model::gguf::GgufHeader::read(std::path::Path::new(gguf))?;
            Some(r::smollm2_dora_adapter(
                &header.load(&candle_core::Device::Cpu)?,
            )?)
        }
        Some("--smollm2") => Some(r::smollm2_adapter(&cfg)),
        Some("--smollm2-ia3") => Some(r::smollm2_ia3_adapter(&cfg)),
        Some("--smollm2-prompt") => Some(r::smollm2_prompt_adapter(&cfg)),
        Some("--smollm2-prefix") => Some(r::smollm2_prefix_adapter(&cfg)),
        _ => None,
    };
    if let Some((lora, adapter)) = smollm2 {
        adapter.save_peft(out, &lora, &cfg, SMOLLM2)?;
        println!("wrote {}", out.display());
        return Ok(());
    }
    let fixture = match first {
        Some("--ia3") => r::Fixture::build_ia3()?,
        Some("--dora") => r::Fixture::build_dora()?,
        Some("--prompt") => r::Fixture::build_prompt()?,
        Some("--prefix") => r::Fixture::build_prefix()?,
        _ => r::Fixture::build()?,
    };
    fixture.model.save_hf(&out.join("base_model"), 0)?;
    fixture
        .adapter
        .save_peft(out, &fixture.lora, &fixture.cfg, "base_model")?;
    println!("wrote {}", out.display());
    Ok(())
}
