//! Identifiers and random secrets.
//!
//! Ids are a short type prefix and a ULID (`evt_01J…`, `sub_01J…`): unique without
//! coordination, and lexically ordered by creation time, which cursor pagination relies on.

/// A new identifier such as `evt_01JD5…`, ordered by creation time.
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
    fn ids_carry_their_prefix_and_sort_by_creation() {
        let a = new_id("evt");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_id("evt");
        assert!(a.starts_with("evt_") && a.len() == 30, "{a}");
        assert!(a < b);
    }
}
