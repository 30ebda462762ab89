//! The run config's values that name a choice: the device and the compute dtype. They are
//! parsed once, when the config is read (a bad value is one line naming it and what is
//! accepted); run.toml keeps the text they were written as.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Where a run computes: `cpu`, `cuda`, `cuda:N`, `metal` or `metal:N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    Cpu,
    /// `cuda` (no index: the first GPU, or under NCCL each rank's own) or `cuda:N`.
    Cuda(Option<usize>),
    Metal(Option<usize>),
}

impl DeviceSpec {
    pub fn is_cuda(self) -> bool {
        matches!(self, DeviceSpec::Cuda(_))
    }

    /// Opens the device, with a hint when this build or machine lacks it.
    pub fn open(self) -> anyhow::Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(index) => {
                let index = index.unwrap_or(0);
                Device::new_cuda(index).map_err(|e| {
                    anyhow::anyhow!("cannot open cuda:{index} ({e}); build with `--features cuda` on a machine with the CUDA toolkit")
                })
            }
            DeviceSpec::Metal(index) => {
                let index = index.unwrap_or(0);
                Device::new_metal(index).map_err(|e| {
                    anyhow::anyhow!(
                        "cannot open metal:{index} ({e}); build with `--features metal`"
                    )
                })
            }
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = ConfigError;

    fn from_str(spec: &str) -> Result<Self, ConfigError> {
        let (kind, index) = match spec.split_once(':') {
            Some((k, i)) => match i.parse::<usize>() {
                Ok(i) => (k, Some(i)),
                Err(_) => {
                    return Err(ConfigError(format!(
                        "device `{spec}`: `{i}` is not a GPU index"
                    )))
                }
            },
            None => (spec, None),
        };
        match (kind, index) {
            ("cpu", None) => Ok(DeviceSpec::Cpu),
            ("cpu", Some(_)) => Err(ConfigError(format!(
                "device `{spec}`: a CPU takes no index; use cpu"
            ))),
            ("cuda", i) => Ok(DeviceSpec::Cuda(i)),
            ("metal", i) => Ok(DeviceSpec::Metal(i)),
            (other, _) => Err(ConfigError(format!(
                "unknown device `{other}`: expected cpu, cuda, cuda:N or metal"
            ))),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(None) => write!(f, "cuda"),
            DeviceSpec::Cuda(Some(i)) => write!(f, "cuda:{i}"),
            DeviceSpec::Metal(None) => write!(f, "metal"),
            DeviceSpec::Metal(Some(i)) => write!(f, "metal:{i}"),
        }
    }
}

/// A run's compute dtype: f32 or bf16 (master weights and optimizer state stay f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum RunDtype {
    F32,
    Bf16,
}

impl RunDtype {
    pub fn dtype(self) -> DType {
        match self {
            RunDtype::F32 => DType::F32,
            RunDtype::Bf16 => DType::BF16,
        }
    }
}

impl FromStr for RunDtype {
    type Err = ConfigError;

    fn from_str(spec: &str) -> Result<Self, ConfigError> {
        match spec {
            "f32" => Ok(RunDtype::F32),
            "bf16" => Ok(RunDtype::Bf16),
            other => Err(ConfigError(format!(
                "dtype `{other}`: expected f32 or bf16"
            ))),
        }
    }
}

impl fmt::Display for RunDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RunDtype::F32 => "f32",
            RunDtype::Bf16 => "bf16",
        })
    }
}

/// serde through the text a choice is written as (`FromStr` and `Display`), so that run.toml
/// keeps that text and a bad value gets the parser's own message.
macro_rules! serde_as_text {
    ($t:ty) => {
        impl TryFrom<String> for $t {
            type Error = ConfigError;
            fn try_from(text: String) -> Result<Self, ConfigError> {
                text.parse()
            }
        }

        impl From<$t> for String {
            fn from(choice: $t) -> String {
                choice.to_string()
            }
        }
    };
}

serde_as_text!(DeviceSpec);
serde_as_text!(RunDtype);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_read_back_as_written() {
        for text in ["cpu", "cuda", "cuda:3", "metal", "metal:1"] {
            assert_eq!(text.parse::<DeviceSpec>().unwrap().to_string(), text);
        }
        for text in ["f32", "bf16"] {
            assert_eq!(text.parse::<RunDtype>().unwrap().to_string(), text);
        }
        let bad = |t: &str| t.parse::<DeviceSpec>().unwrap_err().to_string();
        assert_eq!(
            bad("gpu"),
            "unknown device `gpu`: expected cpu, cuda, cuda:N or metal"
        );
        assert_eq!(bad("cuda:x"), "device `cuda:x`: `x` is not a GPU index");
        assert_eq!(
            "f16".parse::<RunDtype>().unwrap_err().to_string(),
            "dtype `f16`: expected f32 or bf16"
        );
    }
}
