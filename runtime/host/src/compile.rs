//! From bytes to a compiled `Component`: header checks that explain what a
//! file is when it is not a component, and a compilation cache on disk keyed
//! by the component's sha256 and the engine's fingerprint, so a component is
//! compiled once per machine however often it is loaded.

use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use crate::engine::EngineHandle;
use crate::error::LoadError;

const WASM_MAGIC: &[u8; 4] = b"\0asm";
const CORE_MODULE_VERSION: [u8; 4] = [0x01, 0x00, 0x00, 0x00];

/// A compiled component and the sha256 of its bytes.
pub(crate) struct Compiled {
    pub(crate) component: Component,
    pub(crate) sha256: String,
}

/// Says what `wasm` is, without compiling it.
pub(crate) fn check_header(wasm: &[u8]) -> Result<(), LoadError> {
    if wasm.len() < 8 || &wasm[..4] != WASM_MAGIC {
        return Err(LoadError::NotWasm);
    }
    if wasm[4..8] == CORE_MODULE_VERSION {
        return Err(LoadError::CoreModule);
    }
    Ok(())
}

/// Compiles `wasm`, or loads the result of an earlier compilation from the
/// cache directory.
pub(crate) fn compile_cached(handle: &EngineHandle, wasm: &[u8]) -> Result<Compiled, LoadError> {
    check_header(wasm)?;
    let sha256 = hex::encode(Sha256::digest(wasm));
    let Some(dir) = &handle.config.cache_dir else {
        let component = Component::new(&handle.engine, wasm).map_err(|e| LoadError::Invalid(e.into()))?;
        return Ok(Compiled { component, sha256 });
    };
    let path = dir.join(format!("{sha256}-{}.cwasm", handle.engine_fingerprint));
    if path.exists() {
        match load_precompiled(handle, &path) {
            Ok(component) => return Ok(Compiled { component, sha256 }),
            Err(error) => {
                tracing::warn!(path = %path.display(), error = %format!("{error:#}"),
                    "discarding unusable compilation cache entry");
            }
        }
    }
    let precompiled = handle.engine.precompile_component(wasm).map_err(|e| LoadError::Invalid(e.into()))?;
    if let Err(error) = write_atomically(&path, &precompiled) {
        tracing::warn!(path = %path.display(), %error, "could not write compilation cache entry");
    }
    let component = deserialize_trusted(handle, &precompiled).map_err(LoadError::Invalid)?;
    Ok(Compiled { component, sha256 })
}

fn load_precompiled(handle: &EngineHandle, path: &Path) -> anyhow::Result<Component> {
    let bytes = std::fs::read(path)?;
    deserialize_trusted(handle, &bytes)
}

/// Loads machine code this host produced with `precompile_component`.
#[allow(unsafe_code)]
fn deserialize_trusted(handle: &EngineHandle, precompiled: &[u8]) -> anyhow::Result<Component> {
    // SAFETY: the bytes are either the output of `precompile_component` on
    // this engine a moment ago, or a file this host wrote into its own cache
    // directory under a name that binds it to the source sha256 and to the
    // engine fingerprint. wasmtime additionally checks the engine
    // compatibility header and refuses mismatches. The cache directory must
    // be writable only by the wedge user (documented for operators).
    unsafe { Component::deserialize(&handle.engine, precompiled) }.map_err(anyhow::Error::from)
}

/// Writes `bytes` to `path` through a uniquely named temporary file in the
/// same directory and a rename, so neither a crash nor a concurrent writer
/// ever leaves a half-written cache entry behind.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_told_apart() {
        assert!(matches!(check_header(b"hello world"), Err(LoadError::NotWasm)));
        assert!(matches!(check_header(b"\0asm"), Err(LoadError::NotWasm)));
        assert!(matches!(check_header(b"\0asm\x01\0\0\0"), Err(LoadError::CoreModule)));
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
    }
}
