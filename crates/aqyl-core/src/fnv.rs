//! FNV-1a, the one hash Aqyl needs to be the same on every run, process and machine: routing
//! and exchange by key, incident ids, directory names. (std's hasher is randomly seeded.)

/// FNV-1a, 64 bits, over `bytes`.
pub fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// FNV-1a of key parts, each followed by 0xff (a byte no UTF-8 text contains), so `["ab",
/// "c"]` and `["a", "bc"]` differ.
pub fn stable_hash(parts: &[&str]) -> u64 {
    fnv1a(
        parts
            .iter()
            .flat_map(|p| p.bytes().chain(std::iter::once(0xff))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        assert_eq!(fnv1a(*b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(*b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(*b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn parts_are_kept_apart() {
        assert_ne!(stable_hash(&["ab", "c"]), stable_hash(&["a", "bc"]));
    }
}
