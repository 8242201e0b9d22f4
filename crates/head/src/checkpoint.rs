//! Reading a head's tensors from a PyTorch zip checkpoint or a safetensors file.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::Error;

/// The on-disk formats a head loads from, told apart by their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// `torch.save` output since PyTorch 1.6: a zip archive holding `data.pkl`.
    Pth,
    /// A safetensors file: an 8-byte header length then a JSON header.
    Safetensors,
}

/// Largest safetensors header this crate believes in (the real head's is under 1 KiB).
const MAX_HEADER: u64 = 100 << 20;

/// Tells the format from the first bytes, whatever the extension says.
pub(crate) fn sniff(path: &Path) -> Result<Format, Error> {
    let io = |source| Error::Io { path: path.to_owned(), source };
    let mut head = [0u8; 9];
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..]).map_err(io)? {
            0 => break,
            n => filled += n,
        }
    }
    let head = &head[..filled];
    if head.starts_with(b"PK\x03\x04") {
        return Ok(Format::Pth);
    }
    if head.len() == 9 && head[8] == b'{' {
        let len = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        if len <= MAX_HEADER {
            return Ok(Format::Safetensors);
        }
    }
    // Pickle protocol 2+ starts with 0x80, the protocol number: torch's legacy format.
    let hint = if head.first() == Some(&0x80) {
        " (it looks like PyTorch's legacy pre-1.6 format: re-save it with a recent torch.save)"
    } else {
        ""
    };
    Err(Error::UnknownFormat { path: path.to_owned(), hint })
}

/// All tensors of a PyTorch zip checkpoint holding a state dict, or a dict with a
/// `state_dict` entry (as PyTorch Lightning checkpoints do).
pub(crate) fn read_pth(path: &Path) -> Result<Vec<(String, Tensor)>, Error> {
    let decode =
        |source: candle_core::Error| Error::Decode { path: path.to_owned(), source: source.into() };
    let tensors = candle_core::pickle::read_all(path).map_err(decode)?;
    if !tensors.is_empty() {
        return Ok(tensors);
    }
    match candle_core::pickle::read_all_with_key(path, Some("state_dict")) {
        Ok(tensors) => Ok(tensors),
        // No `state_dict` key either: report the file as holding no head tensors.
        Err(_) => Ok(tensors),
    }
}

/// All tensors of a file in either format.
pub(crate) fn read(path: &Path) -> Result<Vec<(String, Tensor)>, Error> {
    match sniff(path)? {
        Format::Pth => read_pth(path),
        Format::Safetensors => {
            let tensors: HashMap<String, Tensor> =
                candle_core::safetensors::load(path, &Device::Cpu).map_err(|source| {
                    Error::Decode { path: path.to_owned(), source: source.into() }
                })?;
            Ok(tensors.into_iter().collect())
        }
    }
}
