//! A small deterministic generator (SplitMix64): the same seed gives the same faults on every
//! machine and every version of the dependencies.

#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// The generator of fault `k` of the campaign with `seed`: every fault has its own, so a
    /// replay of one fault needs no others.
    pub fn for_fault(seed: u64, k: u32) -> Self {
        let mut r = Self(seed ^ 0x9e37_79b9_7f4a_7c15);
        for _ in 0..=(k % 7) {
            r.next_u64();
        }
        Self(r.next_u64() ^ u64::from(k).wrapping_mul(0xbf58_476d_1ce4_e5b9))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// True with probability `p` percent.
    pub fn chance(&mut self, p: u64) -> bool {
        self.next_u64() % 100 < p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_numbers_different_faults_different_streams() {
        let a: Vec<u64> = (0..5).map(|_| Rng::for_fault(7, 3).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(Rng::for_fault(7, 3).next_u64(), Rng::for_fault(7, 4).next_u64());
        assert_ne!(Rng::for_fault(7, 3).next_u64(), Rng::for_fault(8, 3).next_u64());
        let mut r = Rng::for_fault(1, 1);
        assert!((0..1000).all(|_| r.below(6) < 6));
    }
}
