//! What the two functions of the thumbnail-jobs example share: the queue
//! between them, the key an image is known by, the image format and the
//! downsizing.
//!
//! Images are binary PPM (`P6`, 8 bits per sample: maxval 1-255): a text
//! header `P6 <width> <height> <maxval>` (with `#` comments allowed between
//! its fields) and one whitespace byte, then `width × height` RGB triples.
//! It needs no codec crate, and any image tool writes it (`convert in.png
//! out.ppm`, `pnmscale`, GIMP). Plain code with no host calls: it builds
//! for the host too, so `cargo test -p thumbnail-core` tests it natively.

use sha2::{Digest, Sha256};

/// The queue the API sends jobs to and the worker is bound to.
pub const QUEUE: &str = "thumbnails";
/// The largest side of a thumbnail, in pixels.
pub const THUMBNAIL_SIDE_MAX: u32 = 64;
/// The media type of a PPM image.
pub const PPM_MEDIA_TYPE: &str = "image/x-portable-pixmap";
/// The largest side of an accepted image: far above what a job payload can
/// carry, low enough that `width × height × 3` never overflows.
const SIDE_MAX: u32 = 16_384;

/// An image's key: the sha256 of its bytes, in lowercase hex. It names the
/// thumbnail in the cache and in `/thumbnails/<key>`, and is the job's
/// idempotency key, so a resubmitted image makes no second job.
pub fn key(image: &[u8]) -> String {
    hex::encode(Sha256::digest(image))
}

/// Whether `text` has the shape of a [`key`] (64 lowercase hex digits).
pub fn is_key(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A decoded RGB image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Width in pixels (at least 1).
    pub width: u32,
    /// Height in pixels (at least 1).
    pub height: u32,
    /// The largest sample value (1-255); samples are in `0..=maxval`.
    pub maxval: u8,
    /// `width × height` RGB triples, row by row from the top left.
    pub pixels: Vec<u8>,
}

impl Image {
    /// Decodes a binary PPM; the error says what is wrong in words a
    /// client can act on.
    pub fn decode(bytes: &[u8]) -> Result<Image, String> {
        let mut header = Header { bytes, at: 0 };
        if bytes.get(..2) != Some(b"P6") {
            return Err(
                "not a binary PPM image: it must start with \"P6\" (convert it with `convert in.png out.ppm`)".into()
            );
        }
        header.at = 2;
        let width = header.number("width")?;
        let height = header.number("height")?;
        let maxval = header.number("maxval")?;
        if width == 0 || height == 0 || width > SIDE_MAX || height > SIDE_MAX {
            return Err(format!("the image is {width}×{height}; each side must be 1 to {SIDE_MAX} pixels"));
        }
        let Ok(maxval) = u8::try_from(maxval) else {
            return Err(format!("maxval {maxval}: only 8-bit PPM (maxval 1 to 255) is supported"));
        };
        if maxval == 0 {
            return Err("maxval 0: it must be 1 to 255".into());
        }
        // Exactly one whitespace byte ends the header.
        if !bytes.get(header.at).is_some_and(u8::is_ascii_whitespace) {
            return Err("the header must end with one whitespace byte before the pixels".into());
        }
        let pixels = &bytes[header.at + 1..];
        let expected = width as usize * height as usize * 3;
        if pixels.len() != expected {
            return Err(format!(
                "a {width}×{height} image has {expected} bytes of pixels, this one has {}",
                pixels.len()
            ));
        }
        if let Some(sample) = pixels.iter().find(|&&sample| sample > maxval) {
            return Err(format!("sample {sample} is above the image's maxval {maxval}"));
        }
        Ok(Image { width, height, maxval, pixels: pixels.to_vec() })
    }

    /// The image as a binary PPM.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!("P6\n{} {}\n{}\n", self.width, self.height, self.maxval).into_bytes();
        out.extend_from_slice(&self.pixels);
        out
    }

    /// The image shrunk to fit `side_max × side_max`, keeping its aspect
    /// ratio (each side rounded, at least 1), with a box filter: each
    /// thumbnail pixel is the mean of the source pixels it covers. An image
    /// that fits already is returned as it is (never enlarged).
    pub fn thumbnail(&self, side_max: u32) -> Image {
        let longest = self.width.max(self.height);
        if longest <= side_max {
            return self.clone();
        }
        let scaled =
            |side: u32| ((u64::from(side) * u64::from(side_max) + u64::from(longest) / 2) / u64::from(longest)) as u32;
        let (width, height) = (scaled(self.width).max(1), scaled(self.height).max(1));
        let mut pixels = Vec::with_capacity(width as usize * height as usize * 3);
        for y in 0..height {
            let (top, bottom) = span(y, height, self.height);
            for x in 0..width {
                let (left, right) = span(x, width, self.width);
                let mut sums = [0u64; 3];
                for row in top..bottom {
                    let start = (row as usize * self.width as usize + left as usize) * 3;
                    let end = (row as usize * self.width as usize + right as usize) * 3;
                    for pixel in self.pixels[start..end].chunks_exact(3) {
                        for (sum, &sample) in sums.iter_mut().zip(pixel) {
                            *sum += u64::from(sample);
                        }
                    }
                }
                let count = u64::from(bottom - top) * u64::from(right - left);
                // Rounded to the nearest; a mean of samples ≤ maxval is ≤ maxval.
                pixels.extend(sums.map(|sum| ((sum + count / 2) / count) as u8));
            }
        }
        Image { width, height, maxval: self.maxval, pixels }
    }
}

/// The source rows (or columns) `[start, end)` that thumbnail row `index`
/// of `count` covers in a source of `source` rows: never empty, since
/// `count ≤ source`.
fn span(index: u32, count: u32, source: u32) -> (u32, u32) {
    let edge = |i: u32| (u64::from(i) * u64::from(source) / u64::from(count)) as u32;
    (edge(index), edge(index + 1))
}

/// A cursor over a PPM header's whitespace-separated decimal fields.
struct Header<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Header<'_> {
    /// Skips whitespace and `#` comments, then reads a decimal field.
    fn number(&mut self, field: &str) -> Result<u32, String> {
        loop {
            match self.bytes.get(self.at) {
                Some(b) if b.is_ascii_whitespace() => self.at += 1,
                Some(b'#') => {
                    while self.bytes.get(self.at).is_some_and(|&b| b != b'\n') {
                        self.at += 1;
                    }
                }
                _ => break,
            }
        }
        let start = self.at;
        while self.bytes.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
        let digits = &self.bytes[start..self.at];
        if digits.is_empty() || digits.len() > 9 {
            return Err(format!("the PPM header's {field} is missing or not a number"));
        }
        // At most 9 ASCII digits: always a u32.
        Ok(digits.iter().fold(0, |value, digit| value * 10 + u32::from(digit - b'0')))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solid(width: u32, height: u32, rgb: [u8; 3]) -> Image {
        Image { width, height, maxval: 255, pixels: rgb.repeat(width as usize * height as usize) }
    }

    #[test]
    fn decode_reads_what_encode_writes_and_comments() {
        let image = solid(3, 2, [1, 2, 3]);
        assert_eq!(Image::decode(&image.encode()).unwrap(), image);
        let mut commented = b"P6 # made by hand\n3 # wide\n 2\n255\n".to_vec();
        commented.extend_from_slice(&image.pixels);
        assert_eq!(Image::decode(&commented).unwrap(), image);
    }

    #[test]
    fn bad_images_are_refused_with_the_reason() {
        let cases: [(&[u8], &str); 8] = [
            (b"", "must start with \"P6\""),
            (b"P3\n1 1\n255\n0 0 0\n", "must start with \"P6\""),
            (b"P6\n1\n", "height is missing"),
            (b"P6\n0 1\n255\n", "each side must be 1"),
            (b"P6\n1 1\n65535\n\0\0\0\0\0\0", "only 8-bit"),
            (b"P6\n1 1\n255\n\0\0", "has 3 bytes of pixels, this one has 2"),
            (b"P6\n1 1\n255\n\0\0\0\0", "this one has 4"),
            (b"P6\n1 1\n9\n\0\x0a\0", "above the image's maxval 9"),
        ];
        for (bytes, needle) in cases {
            let error = Image::decode(bytes).unwrap_err();
            assert!(error.contains(needle), "{:?}: {error}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn thumbnails_fit_64_keep_the_aspect_and_the_colour() {
        let wide = solid(300, 100, [200, 10, 30]).thumbnail(64);
        assert_eq!((wide.width, wide.height), (64, 21));
        assert!(wide.pixels.chunks_exact(3).all(|pixel| pixel == [200, 10, 30]));
        let tall = solid(7, 1000, [0, 0, 0]).thumbnail(64);
        assert_eq!((tall.width, tall.height), (1, 64));
        let small = solid(20, 10, [5, 5, 5]);
        assert_eq!(small.thumbnail(64), small, "never enlarged");
    }

    #[test]
    fn the_box_filter_averages_what_each_pixel_covers() {
        // 128×2: black left half, white right half → 64×1, still split.
        let mut pixels = Vec::new();
        for _ in 0..2 {
            pixels.extend([0u8; 3].repeat(64));
            pixels.extend([255u8; 3].repeat(64));
        }
        let thumb = Image { width: 128, height: 2, maxval: 255, pixels }.thumbnail(64);
        assert_eq!((thumb.width, thumb.height), (64, 1));
        assert_eq!(&thumb.pixels[..96], [0u8; 96]);
        assert_eq!(&thumb.pixels[96..], [255u8; 96]);
        // Alternating columns average to mid grey.
        let stripes = Image { width: 128, height: 1, maxval: 255, pixels: [0, 0, 0, 255, 255, 255].repeat(64) };
        assert!(stripes.thumbnail(64).pixels.iter().all(|&sample| sample == 128));
    }

    #[test]
    fn keys_are_sha256_hex() {
        assert_eq!(key(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(is_key(&key(b"x")));
        assert!(!is_key("BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"));
        assert!(!is_key("abc"));
    }
}
