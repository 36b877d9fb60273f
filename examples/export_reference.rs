//! Writes the fixture that `tests/reference/make_peft_reference.py` scores with Hugging Face
//! transformers + PEFT: a small random Llama base (HF layout) and a random LoRA adapter (PEFT
//! layout), both drawn from fixed seeds, so the test can rebuild them bit for bit.
//!
//! With `--smollm2`, writes instead the PEFT adapter for SmolLM2-135M that
//! `tests/reference/make_smollm2_peft_reference.py` applies to the model made from the GGUF.
//!
//! With `--smollm2-ia3`, the IA³ adapter for SmolLM2-135M that the same script applies
//! (`tests/reference/smollm2_ia3_reference.json`).
//!
//! With `--smollm2-dora GGUF`, the DoRA adapter for SmolLM2-135M (its magnitudes come from the
//! base's weights, read from the GGUF).
//!
//! With `--ia3` or `--dora`, the same base with the IA³ or DoRA adapter that
//! `tests/reference/make_method_reference.py` scores, steps and generates from.
//!
//! Run with: cargo run --release --example export_reference -- [--smollm2 | --smollm2-ia3 | --smollm2-dora GGUF | --ia3 | --dora] OUT_DIR

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || anyhow::anyhow!("usage: export_reference [--smollm2 | --smollm2-ia3 | --smollm2-dora GGUF | --ia3 | --dora] OUT_DIR");
    let out = std::path::Path::new(args.last().ok_or_else(usage)?);
    let first = args.first().map(String::as_str);
    if let Some("--smollm2-dora") = first {
        let gguf = args.get(1).ok_or_else(usage)?;
        let header = fedsim::model::gguf::GgufHeader::read(std::path::Path::new(gguf))?;
        let model = header.load(&candle_core::Device::Cpu)?;
        let (lora, adapter) = fedsim::model::reference::smollm2_dora_adapter(&model)?;
        adapter.save_peft(out, &lora, "HuggingFaceTB/SmolLM2-135M-Instruct")?;
        println!("wrote {}", out.display());
        return Ok(());
    }
    if let Some(flag @ ("--smollm2" | "--smollm2-ia3")) = first {
        let cfg = fedsim::model::LlamaConfig::smollm2_135m();
        let (lora, adapter) = if flag == "--smollm2" {
            fedsim::model::reference::smollm2_adapter(&cfg)
        } else {
            fedsim::model::reference::smollm2_ia3_adapter(&cfg)
        };
        adapter.save_peft(out, &lora, "HuggingFaceTB/SmolLM2-135M-Instruct")?;
        println!("wrote {}", out.display());
        return Ok(());
    }
    let fixture = match first {
        Some("--ia3") => fedsim::model::reference::Fixture::build_ia3()?,
        Some("--dora") => fedsim::model::reference::Fixture::build_dora()?,
        _ => fedsim::model::reference::Fixture::build()?,
    };
    fixture.model.save_hf(&out.join("base_model"), 0)?;
    fixture
        .adapter
        .save_peft(out, &fixture.lora, "base_model")?;
    println!("wrote {}", out.display());
    Ok(())
}
