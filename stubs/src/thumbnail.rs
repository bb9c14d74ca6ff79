//! The worker's real work: decode an image, shrink it to fit a 128×128 box keeping its aspect
//! ratio, and encode the result as PNG.
//!
//! This is plain CPU work over bytes with no I/O, so it runs on a blocking thread and is
//! tested here without any server.

use std::io::Cursor;

use anyhow::{bail, Context};
use image::{DynamicImage, ImageFormat, ImageReader, Limits};

/// Largest width and height of a thumbnail, in pixels.
pub const THUMBNAIL_SIZE: u32 = 128;

/// Largest width or height of an image the worker agrees to decode; together with the image
/// crate's allocation limit this keeps a hostile or corrupt header from claiming gigabytes.
const MAX_SOURCE_DIMENSION: u32 = 32_768;

/// Decodes `bytes` (any format the image crate was built with), shrinks the image to fit in
/// [`THUMBNAIL_SIZE`]² without enlarging small images, and returns it encoded as PNG.
/// An image of more than `max_pixels` is refused from its header, before any decoding.
pub fn thumbnail_png(bytes: &[u8], max_pixels: u64) -> anyhow::Result<Vec<u8>> {
    let header = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .context("reading image header")?;
    if header.format().is_none() {
        bail!("not an image in a supported format");
    }
    let (w, h) = header
        .into_dimensions()
        .context("reading image dimensions")?;
    let pixels = u64::from(w) * u64::from(h);
    if pixels > max_pixels {
        bail!("image of {w}×{h} pixels is over the limit of {max_pixels} pixels");
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .context("reading image header")?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SOURCE_DIMENSION);
    limits.max_image_height = Some(MAX_SOURCE_DIMENSION);
    // Room for the decoded image at 16 bits a channel, and the decoder's own buffers.
    limits.max_alloc = Some(pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(limits);
    let image = reader.decode().context("decoding image")?;
    if image.width() == 0 || image.height() == 0 {
        bail!("image has no pixels");
    }

    let thumbnail = if image.width() <= THUMBNAIL_SIZE && image.height() <= THUMBNAIL_SIZE {
        image
    } else {
        image.thumbnail(THUMBNAIL_SIZE, THUMBNAIL_SIZE)
    };
    // PNG has no floating-point samples; 16 bits per channel keeps most of their precision.
    let thumbnail = match thumbnail {
        DynamicImage::ImageRgb32F(_) | DynamicImage::ImageRgba32F(_) => {
            DynamicImage::ImageRgba16(thumbnail.to_rgba16())
        }
        other => other,
    };

    let mut png = Cursor::new(Vec::new());
    thumbnail
        .write_to(&mut png, ImageFormat::Png)
        .context("encoding thumbnail as PNG")?;
    Ok(png.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_MAX_PIXELS;
    use image::{ImageBuffer, Rgb};

    fn encoded(width: u32, height: u32, format: ImageFormat) -> Vec<u8> {
        let image = ImageBuffer::from_fn(width, height, |x, y| {
            Rgb([(x % 256) as u8, (y % 256) as u8, 128u8])
        });
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(image)
            .write_to(&mut out, format)
            .expect("encode test image");
        out.into_inner()
    }

    fn dimensions(png: &[u8]) -> (u32, u32) {
        let image = image::load_from_memory_with_format(png, ImageFormat::Png).expect("a PNG");
        (image.width(), image.height())
    }

    #[test]
    fn large_images_shrink_to_fit_keeping_aspect() {
        let png = thumbnail_png(&encoded(400, 200, ImageFormat::Png), DEFAULT_MAX_PIXELS)
            .expect("thumbnail");
        assert_eq!(dimensions(&png), (128, 64));
        let jpeg = thumbnail_png(&encoded(300, 600, ImageFormat::Jpeg), DEFAULT_MAX_PIXELS)
            .expect("thumbnail");
        assert_eq!(dimensions(&jpeg), (64, 128));
    }

    #[test]
    fn small_images_are_not_enlarged() {
        let png = thumbnail_png(&encoded(20, 10, ImageFormat::Bmp), DEFAULT_MAX_PIXELS)
            .expect("thumbnail");
        assert_eq!(dimensions(&png), (20, 10));
    }

    #[test]
    fn garbage_and_truncated_images_are_errors_not_panics() {
        assert!(thumbnail_png(b"", DEFAULT_MAX_PIXELS).is_err());
        assert!(thumbnail_png(b"definitely not an image", DEFAULT_MAX_PIXELS).is_err());
        let png = encoded(200, 200, ImageFormat::Png);
        assert!(thumbnail_png(&png[..png.len() / 2], DEFAULT_MAX_PIXELS).is_err());
        // A PNG header claiming an absurd size.
        let mut huge = png.clone();
        huge[16..20].copy_from_slice(&1_000_000u32.to_be_bytes());
        assert!(thumbnail_png(&huge, DEFAULT_MAX_PIXELS).is_err());
    }

    /// A PNG whose header says 20000 × 20000 greyscale (it would decode to 400 MB); only
    /// the header is there, which is all the check may read.
    fn huge_png_header() -> Vec<u8> {
        fn crc32(bytes: &[u8]) -> u32 {
            let mut crc = 0xffff_ffffu32;
            for &b in bytes {
                crc ^= u32::from(b);
                for _ in 0..8 {
                    crc = if crc & 1 != 0 {
                        (crc >> 1) ^ 0xedb8_8320
                    } else {
                        crc >> 1
                    };
                }
            }
            !crc
        }
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend_from_slice(&20_000u32.to_be_bytes());
        ihdr.extend_from_slice(&20_000u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        for chunk in [
            ihdr,
            b"IDAT\x78\x9c\x03\x00\x00\x00\x00\x01".to_vec(),
            b"IEND".to_vec(),
        ] {
            png.extend_from_slice(&(chunk.len() as u32 - 4).to_be_bytes());
            png.extend_from_slice(&chunk);
            png.extend_from_slice(&crc32(&chunk).to_be_bytes());
        }
        png
    }

    #[test]
    fn a_huge_image_is_refused_from_its_header() {
        let png = huge_png_header();
        let err = thumbnail_png(&png, DEFAULT_MAX_PIXELS).unwrap_err();
        assert!(
            format!("{err:#}").contains("20000×20000 pixels is over the limit"),
            "{err:#}"
        );
    }
}
