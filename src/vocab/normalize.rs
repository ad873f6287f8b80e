//! Tag-name normalisation used to match derived tag lists and to find near-duplicates.

use unicode_normalization::UnicodeNormalization;

/// Normalises a tag name: Unicode NFC, lower case, runs of whitespace (including `_`) collapsed to one
/// space, trimmed.
pub fn normalize_tag(tag: &str) -> String {
    let nfc: String = tag.nfc().collect::<String>().to_lowercase();
    nfc.split(|c: char| c.is_whitespace() || c == '_')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_space_and_unicode() {
        assert_eq!(normalize_tag("  Air  Conditioner "), "air conditioner");
        assert_eq!(normalize_tag("air_conditioner"), "air conditioner");
        assert_eq!(normalize_tag("3D CG rendering"), "3d cg rendering");
        // "é" as e + combining acute vs precomposed
        assert_eq!(normalize_tag("cafe\u{301}"), normalize_tag("caf\u{e9}"));
    }
}
