use crate::Error;

/// Where the encoder runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Device {
    /// The CPU encoder: f32, and bf16 on CPUs with AMX-BF16 or AVX512-BF16.
    Cpu,
    /// CUDA device `N` (the crate's `cuda` feature; the driver, cuBLAS and NVRTC are loaded
    /// when a model is first put there).
    Cuda(usize),
}

impl Device {
    /// Whether this is the CPU.
    pub fn is_cpu(&self) -> bool {
        matches!(self, Device::Cpu)
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// The precision of the encoder's matrix products (embeddings always come back as f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DType {
    /// 32-bit floats: exact parity with transformers in fp32.
    F32,
    /// IEEE half precision (CUDA only).
    F16,
    /// bfloat16 operands with f32 sums.
    BF16,
}

impl DType {
    /// `f32`, `f16` or `bf16`.
    pub fn as_str(&self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }

    pub(crate) fn to_candle(self) -> candle_core::DType {
        match self {
            DType::F32 => candle_core::DType::F32,
            DType::F16 => candle_core::DType::F16,
            DType::BF16 => candle_core::DType::BF16,
        }
    }

    pub(crate) fn from_candle(dtype: candle_core::DType) -> Option<DType> {
        match dtype {
            candle_core::DType::F32 => Some(DType::F32),
            candle_core::DType::F16 => Some(DType::F16),
            candle_core::DType::BF16 => Some(DType::BF16),
            _ => None,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses `cpu`, `cuda` (ordinal 0) or `cuda:N` into a device.
///
/// CUDA devices need the crate's `cuda` feature; without it they are an error saying so.
/// Nothing is opened here: a missing driver or library is reported when a model is loaded.
pub fn parse_device(s: &str) -> Result<Device, Error> {
    let s = s.trim();
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(s, 0),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(ordinal)) => cuda(s, ordinal),
            _ => Err(Error::UnknownDevice(s.to_string())),
        },
    }
}

#[cfg(feature = "cuda")]
fn cuda(_name: &str, ordinal: usize) -> Result<Device, Error> {
    Ok(Device::Cuda(ordinal))
}

#[cfg(not(feature = "cuda"))]
fn cuda(name: &str, _ordinal: usize) -> Result<Device, Error> {
    Err(Error::CudaNotCompiled(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_bad_names() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device(" cpu ").unwrap().is_cpu());
        assert!(matches!(parse_device("gpu"), Err(Error::UnknownDevice(s)) if s == "gpu"));
        assert!(matches!(parse_device("cuda:x"), Err(Error::UnknownDevice(_))));
        assert!(matches!(parse_device("cuda:"), Err(Error::UnknownDevice(_))));
        assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_feature_says_so() {
        let err = parse_device("cuda:1").unwrap_err();
        assert!(matches!(&err, Error::CudaNotCompiled(s) if s == "cuda:1"));
        assert!(err.to_string().contains("`cuda` feature"), "{err}");
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_parses_with_the_feature() {
        assert_eq!(parse_device("cuda").unwrap(), Device::Cuda(0));
        assert_eq!(parse_device("cuda:3").unwrap(), Device::Cuda(3));
    }
}
