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
//! With `--ia3`, the same base with the IA³ adapter that `tests/reference/make_ia3_reference.py`
//! scores, steps and generates from.
//!
//! Run with: cargo run --release --example export_reference -- [--smollm2 | --smollm2-ia3 | --ia3] OUT_DIR

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || anyhow::anyhow!("usage: export_reference [--smollm2 | --smollm2-ia3 | --ia3] OUT_DIR");
    let out = std::path::Path::new(args.last().ok_or_else(usage)?);
    let first = args.first().map(String::as_str);
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
    let fixture = if args.first().is_some_and(|a| a == "--ia3") {
        fedsim::model::reference::Fixture::build_ia3()?
    } else {
        fedsim::model::reference::Fixture::build()?
    };
    fixture.model.save_hf(&out.join("base_model"), 0)?;
    fixture
        .adapter
        .save_peft(out, &fixture.lora, "base_model")?;
    println!("wrote {}", out.display());
    Ok(())
}
