//! The portal's stylesheet and script, compiled into the binary (no separate web server, no
//! Node.js), served under names that carry their hash so browsers may cache them for good;
//! and the theme stylesheet of an accent colour, adjusted for WCAG AA contrast.

use std::sync::LazyLock;

use axum::{
    extract::Path,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};

use crate::service::portal::parse_hex_colour;

/// One embedded file.
#[derive(Debug)]
pub struct Asset {
    stem: &'static str,
    extension: &'static str,
    content_type: &'static str,
    body: &'static str,
    hash: LazyLock<String>,
}

impl Asset {
    /// The path under the portal, e.g. `/assets/portal.3f2a….css`.
    pub fn path(&self) -> String {
        format!("/assets/{}", self.file_name())
    }

    fn file_name(&self) -> String {
        format!("{}.{}.{}", self.stem, *self.hash, self.extension)
    }
}

fn short_hash(body: &str) -> String {
    Sha256::digest(body.as_bytes())[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The stylesheet.
pub static CSS: Asset = Asset {
    stem: "portal",
    extension: "css",
    content_type: "text/css; charset=utf-8",
    body: include_str!("assets/portal.css"),
    hash: LazyLock::new(|| short_hash(include_str!("assets/portal.css"))),
};

/// The script: submits the link landing form, copies secrets.
pub static JS: Asset = Asset {
    stem: "portal",
    extension: "js",
    content_type: "text/javascript; charset=utf-8",
    body: include_str!("assets/portal.js"),
    hash: LazyLock::new(|| short_hash(include_str!("assets/portal.js"))),
};

const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// `GET {path}/assets/{name}`.
pub async fn serve(Path(name): Path<String>) -> Response {
    for asset in [&CSS, &JS] {
        if name == asset.file_name() {
            return (
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static(asset.content_type),
                    ),
                    (header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE)),
                ],
                asset.body,
            )
                .into_response();
        }
    }
    StatusCode::NOT_FOUND.into_response()
}

/// `GET {path}/theme/{rrggbb}.css`: the accent colour as CSS variables, darkened until white
/// text on it (buttons) and it on white (links) reach 4.5:1.
pub async fn theme(Path(file): Path<String>) -> Response {
    let Some(rgb) = file
        .strip_suffix(".css")
        .and_then(|hex| parse_hex_colour(&format!("#{hex}")))
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/css; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE)),
        ],
        theme_css(rgb),
    )
        .into_response()
}

fn theme_css(rgb: [u8; 3]) -> String {
    let accent = readable_on_white(rgb);
    let hex = |c: [u8; 3]| format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2]);
    let soft = mix_with_white(accent, 0.9);
    let strong = scale(accent, 0.8);
    format!(
        ":root{{--accent:{};--accent-strong:{};--accent-soft:{};}}\n",
        hex(accent),
        hex(strong),
        hex(soft)
    )
}

/// Relative luminance (WCAG 2.x).
fn luminance(rgb: [u8; 3]) -> f64 {
    let channel = |c: u8| {
        let c = f64::from(c) / 255.0;
        if c <= 0.039_28 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    0.2126 * channel(rgb[0]) + 0.7152 * channel(rgb[1]) + 0.0722 * channel(rgb[2])
}

/// Contrast ratio against white.
fn contrast_with_white(rgb: [u8; 3]) -> f64 {
    1.05 / (luminance(rgb) + 0.05)
}

fn scale(rgb: [u8; 3], factor: f64) -> [u8; 3] {
    // Components stay within 0..=255: factor is at most 1.
    rgb.map(|c| (f64::from(c) * factor).round().clamp(0.0, 255.0) as u8)
}

fn mix_with_white(rgb: [u8; 3], white: f64) -> [u8; 3] {
    rgb.map(|c| {
        (f64::from(c) * (1.0 - white) + 255.0 * white)
            .round()
            .clamp(0.0, 255.0) as u8
    })
}

/// The colour, darkened step by step until it has 4.5:1 against white (AA for body text).
fn readable_on_white(mut rgb: [u8; 3]) -> [u8; 3] {
    while contrast_with_white(rgb) < 4.5 {
        rgb = scale(rgb, 0.92);
    }
    rgb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accents_are_darkened_to_aa_contrast() {
        for rgb in [[255, 255, 0], [255, 255, 255], [10, 124, 255], [0, 0, 0]] {
            let out = readable_on_white(rgb);
            assert!(contrast_with_white(out) >= 4.5, "{rgb:?} → {out:?}");
        }
        // Dark enough already: unchanged.
        assert_eq!(readable_on_white([29, 78, 216]), [29, 78, 216]);
        assert!(theme_css([255, 255, 0]).starts_with(":root{--accent:#"));
    }

    #[test]
    fn asset_names_carry_their_hash() {
        assert!(CSS.path().starts_with("/assets/portal."));
        assert!(CSS.path().ends_with(".css"));
        assert_ne!(CSS.path(), JS.path().replace(".js", ".css"));
    }
}
