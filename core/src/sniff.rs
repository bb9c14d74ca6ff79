//! Image type sniffing by magic bytes: what a body *is*, whatever its sender claims.

/// The MIME types [`image_mime`] can answer.
pub const IMAGE_TYPES: &[&str] = &[
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "image/bmp",
    "image/tiff",
];

/// Whether a declared `Content-Type` (parameters aside) is one of [`IMAGE_TYPES`]: what a
/// job by reference may say it is, since its bytes are not there to sniff.
pub fn is_image_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    IMAGE_TYPES.iter().any(|t| t.eq_ignore_ascii_case(essence))
}

/// The MIME type of `bytes` when they start like one of the image formats we take
/// (PNG, JPEG, GIF, WebP, BMP, TIFF), else `None`.
pub fn image_mime(bytes: &[u8]) -> Option<&'static str> {
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";
    if bytes.starts_with(PNG) {
        Some("image/png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if bytes.len() >= 12 && bytes.starts_with(b"RIFF") && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else if bytes.len() >= 14 && bytes.starts_with(b"BM") {
        Some("image/bmp")
    } else if bytes.starts_with(b"II*\0") || bytes.starts_with(b"MM\0*") {
        Some("image/tiff")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::{image_mime, is_image_type};

    #[test]
    fn sniffs_each_format() {
        assert_eq!(image_mime(b"\x89PNG\r\n\x1a\nrest"), Some("image/png"));
        assert_eq!(image_mime(&[0xFF, 0xD8, 0xFF, 0xE0]), Some("image/jpeg"));
        assert_eq!(image_mime(b"GIF89a...."), Some("image/gif"));
        assert_eq!(image_mime(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(image_mime(b"BM\0\0\0\0\0\0\0\0\0\0\0\0"), Some("image/bmp"));
        assert_eq!(image_mime(b"II*\0...."), Some("image/tiff"));
        assert_eq!(image_mime(b"MM\0*...."), Some("image/tiff"));
    }

    #[test]
    fn declared_image_types() {
        assert!(is_image_type("image/png"));
        assert!(is_image_type("IMAGE/JPEG; q=1"));
        assert!(!is_image_type("image/svg+xml"));
        assert!(!is_image_type("text/html"));
        assert!(!is_image_type(""));
    }

    #[test]
    fn rejects_non_images() {
        assert_eq!(image_mime(b""), None);
        assert_eq!(image_mime(b"hello world"), None);
        assert_eq!(image_mime(b"RIFF\0\0\0\0WAVE"), None);
        assert_eq!(image_mime(b"BM"), None);
        assert_eq!(image_mime(b"%PDF-1.7"), None);
    }
}
