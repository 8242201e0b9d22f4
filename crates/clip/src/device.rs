use candle_core::Device;

use crate::Error;

/// Parses `cpu`, `cuda` (ordinal 0) or `cuda:N` into a device.
///
/// CUDA devices need the crate's `cuda` feature; without it they are an error saying so.
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
fn cuda(name: &str, ordinal: usize) -> Result<Device, Error> {
    Device::new_cuda(ordinal).map_err(|source| Error::Device { name: name.to_string(), source })
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
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_feature_says_so() {
        let err = parse_device("cuda:1").unwrap_err();
        assert!(matches!(&err, Error::CudaNotCompiled(s) if s == "cuda:1"));
        assert!(err.to_string().contains("`cuda` feature"), "{err}");
    }
}
