//! FNV-1a, the one hash Aqyl needs to be the same on every run, process and machine: routing
//! and exchange by key, incident ids, directory names. (std's hasher is randomly seeded.)

/// FNV-1a's starting state.
pub const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a, 64 bits, over `bytes`.
pub fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(FNV_START, fnv_byte)
}

/// FNV-1a state `h` after one more byte.
#[inline]
pub fn fnv_byte(h: u64, b: u8) -> u64 {
    (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
}

/// FNV-1a state `h` after `bytes` (a plain loop over a slice: the hot paths hash a few short
/// keys per record, and a chain of iterators costs more than the hashing).
#[inline]
pub fn fnv_bytes(h: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(h, |h, b| fnv_byte(h, *b))
}

/// FNV-1a of key parts, each followed by 0xff (a byte no UTF-8 text contains), so `["ab",
/// "c"]` and `["a", "bc"]` differ.
pub fn stable_hash(parts: &[&str]) -> u64 {
    parts
        .iter()
        .fold(FNV_START, |h, p| fnv_byte(fnv_bytes(h, p.as_bytes()), 0xff))
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
    fn stable_hash_is_fnv1a_of_the_parts_each_ended_by_0xff() {
        let bytes = b"traffic\xff158324\xff".to_vec();
        assert_eq!(stable_hash(&["traffic", "158324"]), fnv1a(bytes));
    }

    #[test]
    fn parts_are_kept_apart() {
        assert_ne!(stable_hash(&["ab", "c"]), stable_hash(&["a", "bc"]));
    }
}
