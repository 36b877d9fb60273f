//! Writes the fixture that `tests/reference/make_peft_reference.py` scores with Hugging Face
//! transformers + PEFT: a small random Llama base (HF layout) and a random LoRA adapter (PEFT
//! layout), both drawn from fixed seeds, so the test can rebuild them bit for bit.
//!
//! With `--smollm2`, writes instead the PEFT adapter for SmolLM2-135M that
//! `tests/reference/make_smollm2_peft_reference.py` applies to the model made from the GGUF.
//!
//! With `--ia3`, the same base with the IA³ adapter that `tests/reference/make_ia3_reference.py`
//! scores, steps and generates from.
//!
//! Run with: cargo run --release --example export_reference -- [--smollm2 | --ia3] OUT_DIR

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || anyhow::anyhow!("usage: export_reference [--smollm2 | --ia3] OUT_DIR");
    let out = std::path::Path::new(args.last().ok_or_else(usage)?);
    if args.first().is_some_and(|a| a == "--smollm2") {
        let cfg = fedsim::model::LlamaConfig::smollm2_135m();
        let (lora, adapter) = fedsim::model::reference::smollm2_adapter(&cfg);
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
