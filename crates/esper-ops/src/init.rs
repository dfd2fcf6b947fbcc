//! Seeded parameter initialisation: the same seed and the same construction
//! order give bit-identical parameters on every machine.

use candle_core::{Device, Result, Tensor, Var};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// Draws initial weights from a seeded RNG, in call order.
pub struct ParamInit {
    rng: ChaCha8Rng,
    device: Device,
}

impl std::fmt::Debug for ParamInit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParamInit")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl ParamInit {
    /// A generator seeded with `seed`, creating tensors on `device`.
    pub fn new(seed: u64, device: Device) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            device,
        }
    }

    /// The device tensors are created on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A variable of `shape` with entries uniform in `[-bound, bound)`.
    pub fn uniform(&mut self, shape: &[usize], bound: f32) -> Result<Var> {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| {
                // 24 random bits → a float in [0, 1) with every value exactly representable.
                let unit = (self.rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32;
                (2.0 * unit - 1.0) * bound
            })
            .collect();
        Var::from_tensor(&Tensor::from_vec(values, shape, &self.device)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_weights_and_another_seed_others() {
        let draw = |seed| {
            let mut init = ParamInit::new(seed, Device::Cpu);
            let a = init.uniform(&[3, 4], 0.5).unwrap();
            let b = init.uniform(&[5], 0.5).unwrap();
            (
                a.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
                b.as_tensor().to_vec1::<f32>().unwrap(),
            )
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        let (a, _) = draw(7);
        assert!(a.iter().all(|v| (-0.5..0.5).contains(v)));
    }
}
