//! Device discipline: every tensor a seed, blend, optimizer, snapshot,
//! checkpoint or loss creates lives on the model's device, and data crosses
//! between devices only at a named crossing.
//!
//! Candle already refuses an operation over tensors on two devices, but with
//! a bare `DeviceMismatchBinaryOp` from deep inside a forward pass that names
//! neither the seed nor the parameter. [`ensure_on`] checks where a tensor
//! lives against where the model is *before* it is used, and says which
//! tensor it was; [`move_to`] is the one sanctioned move (`cargo xtask tidy`
//! refuses `.to_device(` anywhere else in library code). The other crossings
//! create their tensors on the device directly: the data loader's batches
//! (`Tensor::from_vec` onto the device) and checkpoint loads
//! (`safetensors::load_buffer` onto the device); telemetry reads values back.
//!
//! The check compares [`DeviceLocation`]s, which exist without a GPU build:
//! a component told its model lives on `cuda:0` refuses CPU tensors, which is
//! how the CPU test suite exercises every mismatch path.

use candle_core::{Device, DeviceLocation, Tensor};

/// A tensor found on another device than the model's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} is on {}, the model on {}", name(*.found), name(*.expected))]
pub struct DeviceMismatch {
    /// Which tensor (a parameter name, "seed s1's parameter w", …).
    pub what: String,
    /// Where the model lives.
    pub expected: DeviceLocation,
    /// Where the tensor was.
    pub found: DeviceLocation,
}

/// `cpu`, `cuda:0`, `metal:0`.
pub fn name(location: DeviceLocation) -> String {
    match location {
        DeviceLocation::Cpu => "cpu".to_owned(),
        DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// `Ok` when `tensor` lives at `expected`; otherwise the mismatch, naming
/// the tensor by `what` (called only on a mismatch).
pub fn ensure_on(
    tensor: &Tensor,
    expected: DeviceLocation,
    what: impl FnOnce() -> String,
) -> Result<(), DeviceMismatch> {
    let found = tensor.device().location();
    if found == expected {
        Ok(())
    } else {
        Err(DeviceMismatch {
            what: what(),
            expected,
            found,
        })
    }
}

/// [`ensure_on`] over named tensors: the first one elsewhere is the error.
pub fn ensure_all_on<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
    expected: DeviceLocation,
    whose: &str,
) -> Result<(), DeviceMismatch> {
    for (name, tensor) in tensors {
        ensure_on(tensor, expected, || format!("{whose} {name}"))?;
    }
    Ok(())
}

/// Moves `tensor` to `device`, `crossing` naming the move (a no-op when it
/// is there already); a failure says which crossing failed and where to.
pub fn move_to(tensor: &Tensor, device: &Device, crossing: &str) -> candle_core::Result<Tensor> {
    tensor
        .to_device(device)
        .map_err(|e| e.context(format!("moving {crossing} to {}", name(device.location()))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    const GPU: DeviceLocation = DeviceLocation::Cuda { gpu_id: 0 };

    #[test]
    fn a_tensor_on_the_model_device_passes_and_another_is_named() {
        let t = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        assert!(ensure_on(&t, DeviceLocation::Cpu, || unreachable!()).is_ok());
        let e = ensure_on(&t, GPU, || "seed s1's parameter w".into()).unwrap_err();
        assert_eq!(
            e,
            DeviceMismatch {
                what: "seed s1's parameter w".into(),
                expected: GPU,
                found: DeviceLocation::Cpu,
            }
        );
        assert_eq!(
            e.to_string(),
            "seed s1's parameter w is on cpu, the model on cuda:0"
        );
    }

    #[test]
    fn the_first_misplaced_tensor_of_a_set_is_the_error() {
        let t = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        let set = [("a", &t), ("b", &t)];
        assert!(ensure_all_on(set, DeviceLocation::Cpu, "host").is_ok());
        let e = ensure_all_on(set, DeviceLocation::Metal { gpu_id: 1 }, "host").unwrap_err();
        assert_eq!(e.what, "host a");
        assert!(e.to_string().contains("metal:1"), "{e}");
    }

    #[test]
    fn a_move_to_the_same_device_keeps_the_values() {
        let t = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let moved = move_to(&t, &Device::Cpu, "a test tensor").unwrap();
        assert_eq!(moved.to_vec1::<f32>().unwrap(), [1.0, 2.0]);
    }
}
