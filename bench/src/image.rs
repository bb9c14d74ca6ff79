//! Test images: real PNGs of random pixels, so that they neither compress to nothing on
//! the wire nor fail to decode when the stubs do the real image work.

use std::io::Cursor;

use anyhow::Context;
use bytes::Bytes;
use image::{ImageFormat, RgbImage};
use rand::RngCore;

use imagejobs_core::ids::Md5;

/// One image size of the benchmark, with its label for the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    pub label: &'static str,
    /// Wanted size in bytes; the PNG comes within a few per cent of it.
    pub bytes: usize,
}

impl Size {
    pub const fn new(label: &'static str, bytes: usize) -> Self {
        Size { label, bytes }
    }
}

/// An encoded image and what a client would send along with it.
#[derive(Clone, Debug)]
pub struct Image {
    pub png: Bytes,
    pub md5: Md5,
}

impl Image {
    /// A PNG of random RGB pixels of about `size.bytes` (random pixels do not compress,
    /// so the file is the pixels plus a little framing).
    pub fn generate(size: Size) -> anyhow::Result<Image> {
        // Encode once with a guess of the framing, then again with the framing measured.
        let mut framing = 100;
        let mut png = Bytes::new();
        for _ in 0..2 {
            let wanted = (size.bytes.saturating_sub(framing) / 3).max(1);
            let (encoded, pixels) = random_png(wanted)?;
            png = encoded;
            framing = png.len().saturating_sub(pixels * 3);
            if png.len().abs_diff(size.bytes) * 50 < size.bytes {
                break;
            }
        }
        anyhow::ensure!(
            imagejobs_core::sniff::image_mime(&png) == Some("image/png"),
            "the generated image does not sniff as PNG"
        );
        let md5 = Md5::of(&png);
        Ok(Image { png, md5 })
    }

    /// The seed's JSON submit body: `{"encoding": "base64", "md5", "content"}`.
    pub fn json_body(&self) -> Bytes {
        use base64::Engine;
        let content = base64::engine::general_purpose::STANDARD.encode(&self.png);
        let body = serde_json::json!({
            "encoding": "base64",
            "md5": self.md5.to_string(),
            "content": content,
        });
        Bytes::from(body.to_string())
    }
}

/// A PNG of about `pixels` random RGB pixels, as square as can be, and its pixel count.
fn random_png(pixels: usize) -> anyhow::Result<(Bytes, usize)> {
    let width = (pixels as f64).sqrt().floor().max(1.0) as u32;
    let height = (pixels as u32 / width).max(1);
    let mut raw = vec![0u8; (width * height * 3) as usize];
    rand::rng().fill_bytes(&mut raw);
    let img = RgbImage::from_raw(width, height, raw).context("pixel buffer size")?;
    let mut out = Cursor::new(Vec::with_capacity(pixels * 3 + 4096));
    img.write_to(&mut out, ImageFormat::Png)
        .context("encoding a PNG")?;
    Ok((Bytes::from(out.into_inner()), (width * height) as usize))
}

/// Human-readable byte count (KiB/MiB), for labels and notes.
pub fn human_bytes(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b >= KIB * KIB * KIB {
        format!("{:.2} GiB", b / (KIB * KIB * KIB))
    } else if b >= KIB * KIB {
        format!("{:.1} MiB", b / (KIB * KIB))
    } else if b >= KIB {
        format!("{:.0} KiB", b / KIB)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_come_close_to_their_size_and_decode() {
        for bytes in [1024, 8 * 1024, 148_480, 2 * 1024 * 1024] {
            let img = Image::generate(Size::new("x", bytes)).expect("generates");
            let len = img.png.len() as f64;
            assert!(
                (len / bytes as f64 - 1.0).abs() < 0.1,
                "{len} bytes for a wanted {bytes}"
            );
            image::load_from_memory(&img.png).expect("decodes");
        }
    }
}
