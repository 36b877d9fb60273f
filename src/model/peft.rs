//! PEFT's adapter directory format (`adapter_model.safetensors` + `adapter_config.json`):
//! what fedsim writes for every run, and what it reads back — its own runs or adapters trained
//! elsewhere with Hugging Face PEFT.

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;

use super::{
    AdapterLayout, AdapterMethod, AdapterSet, LlamaConfig, LoraConfig, ModelError, PromptInit,
    TargetModule,
};

/// The fields of `adapter_config.json` fedsim reads; the options it cannot honour are read
/// so they can be refused.
#[derive(Debug, Deserialize)]
struct PeftConfig {
    peft_type: Option<String>,
    r: usize,
    lora_alpha: f64,
    #[serde(default)]
    lora_dropout: f64,
    target_modules: TargetModules,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    bias: Option<String>,
    #[serde(default)]
    modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    layers_to_transform: Option<serde_json::Value>,
    #[serde(default)]
    rank_pattern: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    alpha_pattern: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TargetModules {
    List(Vec<String>),
    One(String),
}

impl PeftConfig {
    /// What fedsim cannot apply, if anything.
    fn unsupported(&self) -> Option<String> {
        let set = |o: &Option<serde_json::Map<_, _>>| o.as_ref().is_some_and(|m| !m.is_empty());
        [
            (
                self.peft_type.as_deref().is_some_and(|t| t != "LORA"),
                "peft_type is not LORA",
            ),
            (self.use_rslora, "use_rslora is true"),
            (self.fan_in_fan_out, "fan_in_fan_out is true"),
            (
                self.bias.as_deref().is_some_and(|b| b != "none"),
                "bias is not \"none\"",
            ),
            (
                self.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()),
                "modules_to_save is set",
            ),
            (
                self.layers_to_transform
                    .as_ref()
                    .is_some_and(|v| !v.is_null()),
                "layers_to_transform is set",
            ),
            (
                set(&self.rank_pattern) || set(&self.alpha_pattern),
                "rank_pattern/alpha_pattern is set",
            ),
        ]
        .into_iter()
        .find(|(bad, _)| *bad)
        .map(|(_, why)| why.to_string())
    }
}

fn file_error(path: &Path, message: String) -> ModelError {
    ModelError::File {
        path: path.to_path_buf(),
        message,
    }
}

/// Read a PEFT LoRA adapter directory for a model shaped like `cfg`.
///
/// # Errors
/// [`ModelError::File`] naming the file and what is wrong: unreadable, not PEFT's JSON, an
/// option fedsim cannot apply, a target module it does not know, tensors that do not match.
pub fn load_peft(dir: &Path, cfg: &LlamaConfig) -> Result<(AdapterSet, LoraConfig), ModelError> {
    let config_path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&config_path)
        .map_err(|e| file_error(&config_path, e.to_string()))?;
    let lora = match peft_type(&text) {
        Some("IA3") => ia3_config(&text, &config_path)?,
        Some(kind @ ("PROMPT_TUNING" | "PREFIX_TUNING")) => {
            virtual_tokens_config(&text, kind, cfg, &config_path)?
        }
        _ => lora_config(&text, &config_path)?,
    };
    let weights = dir.join("adapter_model.safetensors");
    let bytes = std::fs::read(&weights).map_err(|e| file_error(&weights, e.to_string()))?;
    let layout = Arc::new(AdapterLayout::new(cfg, &lora));
    let adapter = AdapterSet::from_safetensors(layout, &bytes)
        .map_err(|e| file_error(&weights, crate::fmt::chain(&e)))?;
    adapter.check_finite().map_err(|e| e.in_file(&weights))?;
    Ok((adapter, lora))
}

/// The `peft_type` of an adapter config, if it is JSON with one.
fn peft_type(text: &str) -> Option<&'static str> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    match v.get("peft_type")?.as_str()? {
        "IA3" => Some("IA3"),
        "LORA" => Some("LORA"),
        "PROMPT_TUNING" => Some("PROMPT_TUNING"),
        "PREFIX_TUNING" => Some("PREFIX_TUNING"),
        _ => None,
    }
}

/// PEFT names → our target modules, canonical order.
fn modules(names: TargetModules, config_path: &Path) -> Result<Vec<TargetModule>, ModelError> {
    let names = match names {
        TargetModules::List(v) => v,
        TargetModules::One(s) => vec![s],
    };
    let mut out = names
        .iter()
        .map(|n| {
            TargetModule::ALL
                .into_iter()
                .find(|m| m.name() == n)
                .ok_or_else(|| {
                    file_error(
                        config_path,
                        format!("target module {n:?} is not one of q/k/v/o/gate/up/down_proj"),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    out.sort();
    out.dedup();
    Ok(out)
}

/// The fields of an IA³ `adapter_config.json` fedsim reads.
#[derive(Debug, Deserialize)]
struct Ia3Config {
    target_modules: TargetModules,
    feedforward_modules: Option<TargetModules>,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    modules_to_save: Option<Vec<String>>,
}

fn ia3_config(text: &str, config_path: &Path) -> Result<LoraConfig, ModelError> {
    let ia3: Ia3Config = serde_json::from_str(text)
        .map_err(|e| file_error(config_path, format!("not a PEFT IA3 config: {e}")))?;
    if ia3.fan_in_fan_out || ia3.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(file_error(
            config_path,
            "fan_in_fan_out or modules_to_save is set: fedsim applies plain IA3 only".into(),
        ));
    }
    let targets = modules(ia3.target_modules, config_path)?;
    let ff = match ia3.feedforward_modules {
        Some(f) => modules(f, config_path)?,
        None => Vec::new(),
    };
    if targets.is_empty() || ff.iter().any(|m| !targets.contains(m)) {
        return Err(file_error(
            config_path,
            "no target modules, or a feedforward module that is not a target".into(),
        ));
    }
    Ok(LoraConfig::ia3(targets, ff))
}

/// The fields of a prompt or prefix tuning `adapter_config.json` fedsim reads.
#[derive(Debug, Deserialize)]
struct VirtualTokensConfig {
    num_virtual_tokens: usize,
    token_dim: Option<usize>,
    num_layers: Option<usize>,
    #[serde(default = "one")]
    num_transformer_submodules: usize,
    #[serde(default)]
    prefix_projection: bool,
    #[serde(default)]
    prompt_tuning_init: Option<String>,
    #[serde(default)]
    prompt_tuning_init_text: Option<String>,
}

fn one() -> usize {
    1
}

fn virtual_tokens_config(
    text: &str,
    kind: &str,
    cfg: &LlamaConfig,
    config_path: &Path,
) -> Result<LoraConfig, ModelError> {
    let c: VirtualTokensConfig = serde_json::from_str(text)
        .map_err(|e| file_error(config_path, format!("not a PEFT {kind} config: {e}")))?;
    let width = if kind == "PROMPT_TUNING" {
        cfg.hidden_size
    } else {
        cfg.num_key_value_heads * cfg.head_dim()
    };
    let problem = [
        (
            c.num_virtual_tokens == 0,
            "num_virtual_tokens is 0".to_string(),
        ),
        (
            c.num_transformer_submodules != 1,
            "num_transformer_submodules is not 1 (an encoder-decoder adapter)".into(),
        ),
        (
            c.prefix_projection,
            "prefix_projection is true: fedsim applies prefix tuning without the MLP".into(),
        ),
        (
            c.token_dim.is_some_and(|d| d != width),
            format!("token_dim {:?} is not the model's {width}", c.token_dim),
        ),
        (
            c.num_layers.is_some_and(|l| l != cfg.num_hidden_layers),
            format!(
                "num_layers {:?} is not the model's {}",
                c.num_layers, cfg.num_hidden_layers
            ),
        ),
    ]
    .into_iter()
    .find(|(bad, _)| *bad);
    if let Some((_, why)) = problem {
        return Err(file_error(config_path, why));
    }
    if kind == "PREFIX_TUNING" {
        return Ok(LoraConfig::prefix_tuning(c.num_virtual_tokens));
    }
    let init = match c.prompt_tuning_init.as_deref() {
        Some("SAMPLE_VOCAB") => PromptInit::SampleVocab,
        Some("TEXT") => PromptInit::Text(c.prompt_tuning_init_text.unwrap_or_default()),
        _ => PromptInit::Random,
    };
    Ok(LoraConfig::prompt_tuning(c.num_virtual_tokens, init))
}

fn lora_config(text: &str, config_path: &Path) -> Result<LoraConfig, ModelError> {
    let peft: PeftConfig = serde_json::from_str(text)
        .map_err(|e| file_error(config_path, format!("not a PEFT LoRA config: {e}")))?;
    if let Some(why) = peft.unsupported() {
        return Err(file_error(
            config_path,
            format!("{why}: fedsim applies plain LoRA, DoRA, IA3, prompt and prefix tuning only"),
        ));
    }
    let target_modules = modules(peft.target_modules, config_path)?;
    if !peft.lora_alpha.is_finite() || !(0.0..1.0).contains(&peft.lora_dropout) {
        return Err(file_error(
            config_path,
            format!(
                "lora_alpha {} must be finite and lora_dropout {} in [0, 1)",
                peft.lora_alpha, peft.lora_dropout
            ),
        ));
    }
    if peft.r == 0 || target_modules.is_empty() {
        return Err(file_error(
            config_path,
            "r is 0 or no target modules".into(),
        ));
    }
    let lora = LoraConfig {
        r: peft.r,
        alpha: peft.lora_alpha,
        dropout: peft.lora_dropout,
        target_modules,
        method: if peft.use_dora {
            AdapterMethod::Dora
        } else {
            AdapterMethod::Lora
        },
    };
    Ok(lora)
}

impl AdapterSet {
    /// Write `adapter_model.safetensors` and `adapter_config.json` into `dir`, as PEFT's
    /// `save_pretrained` does, so `PeftModel.from_pretrained(base, dir)` loads it (`cfg`: the
    /// model it adapts).
    ///
    /// # Errors
    /// An I/O error, reported with the path.
    pub fn save_peft(
        &self,
        dir: &Path,
        lora: &LoraConfig,
        cfg: &LlamaConfig,
        base_model: &str,
    ) -> Result<(), ModelError> {
        let io = |path: &Path, e: std::io::Error| ModelError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let weights = dir.join("adapter_model.safetensors");
        std::fs::write(&weights, self.to_safetensors()?).map_err(|e| io(&weights, e))?;
        let config = peft_config(lora, cfg, base_model);
        let path = dir.join("adapter_config.json");
        let text = serde_json::to_string_pretty(&config).expect("json value serialises");
        std::fs::write(&path, text).map_err(|e| io(&path, e))
    }
}

/// `adapter_config.json` for prompt or prefix tuning (None for the other methods). Prefix
/// tuning's `token_dim` and `num_attention_heads` are the KV heads', as PEFT sets them for
/// grouped-query attention.
fn virtual_tokens_json(
    lora: &LoraConfig,
    cfg: &LlamaConfig,
    base_model: &str,
) -> Option<serde_json::Value> {
    let common = json!({
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "num_virtual_tokens": lora.method.virtual_tokens(),
        "num_transformer_submodules": 1,
        "num_layers": cfg.num_hidden_layers,
        "inference_mode": true,
        "revision": null
    });
    let mut config = match &lora.method {
        AdapterMethod::PromptTuning { init, .. } => json!({
            "peft_type": "PROMPT_TUNING",
            "token_dim": cfg.hidden_size,
            "num_attention_heads": cfg.num_attention_heads,
            "prompt_tuning_init": init.peft_name(),
            "prompt_tuning_init_text": match init {
                PromptInit::Text(t) => Some(t.as_str()),
                _ => None,
            },
            "tokenizer_name_or_path": matches!(init, PromptInit::Text(_)).then_some(base_model),
        }),
        AdapterMethod::PrefixTuning { .. } => {
            let kv = cfg.num_key_value_heads * cfg.head_dim();
            json!({
                "peft_type": "PREFIX_TUNING",
                "token_dim": kv,
                "num_attention_heads": cfg.num_key_value_heads,
                "encoder_hidden_size": kv,
                "prefix_projection": false,
            })
        }
        _ => return None,
    };
    let map = config.as_object_mut().expect("an object");
    for (k, v) in common.as_object().expect("an object") {
        map.insert(k.clone(), v.clone());
    }
    Some(config)
}

/// `adapter_config.json` as PEFT's `save_pretrained` writes it for `lora`'s method.
fn peft_config(lora: &LoraConfig, cfg: &LlamaConfig, base_model: &str) -> serde_json::Value {
    let names = |m: &[TargetModule]| {
        let mut v: Vec<&str> = m.iter().map(|m| m.name()).collect();
        v.sort();
        v.dedup();
        v
    };
    let targets = names(&lora.target_modules);
    if let Some(config) = virtual_tokens_json(lora, cfg, base_model) {
        return config;
    }
    if let AdapterMethod::Ia3 {
        feedforward_modules,
    } = &lora.method
    {
        return json!({
            "peft_type": "IA3",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "target_modules": targets,
            "feedforward_modules": names(feedforward_modules),
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_ia3_weights": true,
            "modules_to_save": null,
            "revision": null
        });
    }
    json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": lora.r,
            "lora_alpha": lora.alpha,
            "lora_dropout": lora.dropout,
            "target_modules": targets,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "modules_to_save": null,
            "layers_to_transform": null,
            "layers_pattern": null,
            "rank_pattern": {},
            "alpha_pattern": {},
            "use_rslora": false,
            "use_dora": lora.method == AdapterMethod::Dora,
            "revision": null
    })
}
