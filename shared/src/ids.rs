//! Identifiers and random secrets.
//!
//! Ids are a short type prefix and a ULID (`evt_01J…`, `sub_01J…`): unique without
//! coordination, and lexically ordered by creation time (to the millisecond).

/// A new identifier such as `evt_01JD5…`, ordered by creation time to the millisecond.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", ulid::Ulid::new())
}

/// `n` bytes from the operating system's CSPRNG.
///
/// # Panics
/// If the operating system has no entropy source, which no supported platform lacks.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_prefix_and_are_unique() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_id("evt")).collect();
        assert_eq!(ids.len(), 1000);
        assert!(
            ids.iter()
                .all(|id| id.starts_with("evt_") && id.len() == 30)
        );
    }
}
