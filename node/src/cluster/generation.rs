//! The generation number a node gossips under: it must grow on every restart, or peers
//! would mistake the new incarnation for the old one and ignore its fresh state.

use std::io;
use std::path::Path;

/// Wall-clock milliseconds, but never less than one more than the last generation used,
/// so a clock that steps backwards cannot reuse a generation.
pub fn next_generation(previous: Option<u64>, now_ms: u64) -> u64 {
    match previous {
        Some(previous) => now_ms.max(previous.saturating_add(1)),
        None => now_ms,
    }
}

/// Reads the last generation from `data_dir`, picks the next one and persists it.
pub fn bump_generation(data_dir: &Path, now_ms: u64) -> io::Result<u64> {
    let path = data_dir.join("generation");
    let previous = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u64>().ok(),
        Err(err) if err.kind() == io::ErrorKind::NotFound => None,
        Err(err) => return Err(err),
    };
    let generation = next_generation(previous, now_ms);
    std::fs::create_dir_all(data_dir)?;
    let tmp = data_dir.join("generation.tmp");
    std::fs::write(&tmp, generation.to_string())?;
    std::fs::rename(&tmp, &path)?;
    Ok(generation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_grows_even_when_the_clock_goes_back() {
        assert_eq!(next_generation(None, 1_000), 1_000);
        assert_eq!(next_generation(Some(500), 1_000), 1_000);
        assert_eq!(next_generation(Some(5_000), 1_000), 5_001);
    }

    #[test]
    fn generation_is_persisted_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let first = bump_generation(dir.path(), 10).unwrap();
        let second = bump_generation(dir.path(), 10).unwrap();
        assert_eq!((first, second), (10, 11));
    }
}
