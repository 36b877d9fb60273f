//! Writes the fixture that `tests/reference/make_peft_reference.py` scores with Hugging Face
//! transformers + PEFT: a small random Llama base (HF layout) and a random LoRA adapter (PEFT
//! layout), both drawn from fixed seeds, so the test can rebuild them bit for bit.
//!
//! Run with: cargo run --release --example export_reference -- OUT_DIR

fn main() -> anyhow::Result<()> {
    let out = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: export_reference OUT_DIR"))?;
    let out = std::path::Path::new(&out);
    let fixture = fedsim::model::reference::Fixture::build()?;
    fixture.model.save_hf(&out.join("base_model"), 0)?;
    fixture
        .adapter
        .save_peft(out, &fixture.lora, "base_model")?;
    println!("wrote {}", out.display());
    Ok(())
}
