//! The PNG plots: latency against offered load, drawn with plotters' bitmap backend and the
//! font8x8 bitmap font.

use std::path::Path;

use plotters::prelude::*;

use super::{fig, lat, Runs};

struct Series {
    label: String,
    color: RGBColor,
    dashed: bool,
    /// Points only, no line (runs that are not part of the sweep).
    markers: bool,
    points: Vec<(f64, f64)>,
}

/// (offered rate, p50, p99 of `latency`) of the runs named `prefix…`, by rate.
fn latency_points(runs: &Runs, prefix: &str, latency: &str) -> Vec<(f64, f64, f64)> {
    let mut pts: Vec<(f64, f64, f64)> = runs
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .filter_map(|(_, j)| {
            Some((
                fig(j, "offered rate")?,
                lat(j, latency, "p50_ms")?,
                lat(j, latency, "p99_ms")?,
            ))
        })
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    pts
}

pub(crate) fn plot_dm(runs: &Runs, path: &Path) -> anyhow::Result<()> {
    let points = |prefix: &str| latency_points(runs, prefix, "send → delivered");
    let sweep = points("sweep-dm-");
    let at = points("dm-at-");
    if sweep.is_empty() && at.is_empty() {
        return Ok(());
    }
    let blue = RGBColor(31, 119, 180);
    let orange = RGBColor(255, 127, 14);
    let mut series = vec![
        Series {
            label: "p50 send -> delivered (sweep, 10 s runs)".into(),
            color: blue,
            dashed: false,
            markers: false,
            points: sweep.iter().map(|p| (p.0, p.1)).collect(),
        },
        Series {
            label: "p99 send -> delivered (sweep)".into(),
            color: blue,
            dashed: true,
            markers: false,
            points: sweep.iter().map(|p| (p.0, p.2)).collect(),
        },
    ];
    if !at.is_empty() {
        series.push(Series {
            label: "p50 / p99 at 25/50/75 % of max (20 s runs)".into(),
            color: orange,
            dashed: false,
            markers: true,
            points: at.iter().flat_map(|p| [(p.0, p.1), (p.0, p.2)]).collect(),
        });
    }
    chart(
        path,
        "chatmq dm, 200 users: latency vs offered load",
        &series,
    )
}

pub(crate) fn plot_raw(runs: &Runs, path: &Path) -> anyhow::Result<()> {
    let mut series = Vec::new();
    for (broker, color) in [
        ("mosquitto", RGBColor(214, 39, 40)),
        ("chatmq", RGBColor(31, 119, 180)),
    ] {
        let prefix = format!("sweep-raw-{broker}-p2p-q1-");
        let pts = latency_points(runs, &prefix, "end-to-end");
        if pts.is_empty() {
            continue;
        }
        series.push(Series {
            label: format!("{broker} p50"),
            color,
            dashed: false,
            markers: false,
            points: pts.iter().map(|p| (p.0, p.1)).collect(),
        });
        series.push(Series {
            label: format!("{broker} p99"),
            color,
            dashed: true,
            markers: false,
            points: pts.iter().map(|p| (p.0, p.2)).collect(),
        });
    }
    if series.is_empty() {
        return Ok(());
    }
    chart(
        path,
        "raw p2p QoS 1, 10 pairs: latency vs offered load",
        &series,
    )
}

/// Nice tick values for a linear axis from 0 to `max`.
pub fn linear_ticks(max: f64) -> Vec<f64> {
    if max <= 0.0 || !max.is_finite() {
        return vec![0.0];
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut t = Vec::new();
    let mut v = 0.0;
    while v <= max * 1.0001 + step {
        t.push(v);
        if v >= max {
            break;
        }
        v += step;
    }
    t
}

/// Decades covering `lo..=hi` for a log axis.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let a = lo.max(1e-3).log10().floor() as i32;
    let b = hi.max(lo * 10.0).log10().ceil() as i32;
    (a..=b).map(|e| 10f64.powi(e)).collect()
}

fn fmt_tick(v: f64) -> String {
    if v >= 1000.0 {
        let k = v / 1000.0;
        if (k - k.round()).abs() < 1e-9 {
            format!("{}k", k.round())
        } else {
            format!("{k:.1}k")
        }
    } else if v >= 1.0 || v == 0.0 {
        format!("{}", v.round())
    } else {
        format!("{v}")
    }
}

const W: i32 = 960;
const H: i32 = 600;
const SCALE: i32 = 2;

// Longer than 80 lines: one chart's drawing steps (frame, grid and ticks, series, legend)
// in drawing order, all on the axes computed at the top.
fn chart(path: &Path, title: &str, series: &[Series]) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (W as u32, H as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let (l, r, t, b) = (110, W - 50, 60, H - 90);
    let xmax = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(0.0, f64::max);
    let ys: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|v| *v > 0.0)
        .collect();
    let ylo = ys.iter().copied().fold(f64::INFINITY, f64::min);
    let yhi = ys.iter().copied().fold(0.0, f64::max);
    let xt = linear_ticks(xmax);
    let yt = log_ticks(ylo, yhi);
    let xspan = *xt.last().unwrap_or(&1.0);
    let (ya, yb) = (
        yt.first().copied().unwrap_or(0.1).log10(),
        yt.last().copied().unwrap_or(1000.0).log10(),
    );
    let px = |x: f64| l + ((x / xspan) * (r - l) as f64) as i32;
    let py = |y: f64| b - (((y.max(1e-3).log10() - ya) / (yb - ya)) * (b - t) as f64) as i32;
    let grid = RGBColor(225, 225, 225);
    let ink = RGBColor(40, 40, 40);
    // grid, ticks and labels
    for &x in &xt {
        let xp = px(x);
        root.draw(&PathElement::new(vec![(xp, t), (xp, b)], grid))?;
        root.draw(&PathElement::new(vec![(xp, b), (xp, b + 6)], ink))?;
        let s = fmt_tick(x);
        text(&root, &s, xp - text_w(&s) / 2, b + 12, ink, false)?;
    }
    for &y in &yt {
        let yp = py(y);
        root.draw(&PathElement::new(vec![(l, yp), (r, yp)], grid))?;
        root.draw(&PathElement::new(vec![(l - 6, yp), (l, yp)], ink))?;
        let s = fmt_tick(y);
        text(&root, &s, l - 12 - text_w(&s), yp - 8, ink, false)?;
        // minor ticks 2..9
        for m in 2..10 {
            let v = y * m as f64;
            if v.log10() <= yb + 1e-9 {
                let yv = py(v);
                root.draw(&PathElement::new(vec![(l - 3, yv), (l, yv)], ink))?;
            }
        }
    }
    root.draw(&PathElement::new(
        vec![(l, t), (l, b), (r, b)],
        ink.stroke_width(2),
    ))?;
    text(&root, title, (W - text_w(title)) / 2, 18, ink, false)?;
    let xl = "offered load (messages/s)";
    text(&root, xl, (l + r - text_w(xl)) / 2, H - 40, ink, false)?;
    let yl = "latency (ms, log scale)";
    text(&root, yl, 20, (t + b + text_w(yl)) / 2, ink, true)?;
    // series
    for s in series {
        let pts: Vec<(i32, i32)> = s.points.iter().map(|&(x, y)| (px(x), py(y))).collect();
        let style = s.color.stroke_width(3);
        if s.markers {
            // points only
        } else if s.dashed {
            for w in pts.windows(2) {
                dashed(&root, w[0], w[1], s.color)?;
            }
        } else {
            root.draw(&PathElement::new(pts.clone(), style))?;
        }
        for &(x, y) in &pts {
            root.draw(&Circle::new(
                (x, y),
                if s.markers { 7 } else { 5 },
                s.color.filled(),
            ))?;
        }
    }
    // legend, top left inside the plot
    let mut ly = t + 12;
    for s in series {
        let (x0, x1) = (l + 16, l + 56);
        if s.markers {
            root.draw(&Circle::new(((x0 + x1) / 2, ly + 8), 6, s.color.filled()))?;
        } else if s.dashed {
            dashed(&root, (x0, ly + 8), (x1, ly + 8), s.color)?;
        } else {
            root.draw(&PathElement::new(
                vec![(x0, ly + 8), (x1, ly + 8)],
                s.color.stroke_width(3),
            ))?;
        }
        text(&root, &s.label, x1 + 10, ly, ink, false)?;
        ly += 24;
    }
    root.present()?;
    Ok(())
}

fn dashed(
    root: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    a: (i32, i32),
    b: (i32, i32),
    color: RGBColor,
) -> anyhow::Result<()> {
    let (dx, dy) = ((b.0 - a.0) as f64, (b.1 - a.1) as f64);
    let len = (dx * dx + dy * dy).sqrt();
    let n = (len / 10.0).ceil().max(1.0) as i32;
    for i in (0..n).step_by(2) {
        let f0 = i as f64 / n as f64;
        let f1 = ((i + 1) as f64 / n as f64).min(1.0);
        let p = |f: f64| (a.0 + (dx * f) as i32, a.1 + (dy * f) as i32);
        root.draw(&PathElement::new(vec![p(f0), p(f1)], color.stroke_width(3)))?;
    }
    Ok(())
}

fn text_w(s: &str) -> i32 {
    s.chars().count() as i32 * 8 * SCALE
}

/// Draws `s` with the 8×8 bitmap font at SCALE×; `vertical` turns it 90° counter-clockwise
/// (reading bottom to top, starting at (x, y)).
fn text(
    root: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    s: &str,
    x: i32,
    y: i32,
    color: RGBColor,
    vertical: bool,
) -> anyhow::Result<()> {
    for (i, ch) in s.chars().enumerate() {
        let ch = match ch {
            '→' => '>',
            '–' => '-',
            c => c,
        };
        let Some(glyph) = font8x8::legacy::BASIC_LEGACY.get(ch as usize) else {
            continue;
        };
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits & (1 << col) == 0 {
                    continue;
                }
                for sy in 0..SCALE {
                    for sx in 0..SCALE {
                        let (gx, gy) = ((i as i32 * 8 + col) * SCALE + sx, row as i32 * SCALE + sy);
                        let p = if vertical {
                            (x + gy, y - gx)
                        } else {
                            (x + gx, y + gy)
                        };
                        root.draw_pixel(p, &color)?;
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks() {
        assert_eq!(
            linear_ticks(10_000.0),
            vec![0.0, 2000.0, 4000.0, 6000.0, 8000.0, 10000.0]
        );
        assert_eq!(*linear_ticks(23_000.0).last().unwrap(), 25_000.0);
        assert_eq!(log_ticks(0.3, 45.0), vec![0.1, 1.0, 10.0, 100.0]);
        assert_eq!(fmt_tick(2500.0), "2.5k");
        assert_eq!(fmt_tick(20000.0), "20k");
        assert_eq!(fmt_tick(0.1), "0.1");
    }

    #[test]
    fn draws_a_png() {
        let dir = std::env::temp_dir().join(format!("bench-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.png");
        let s = vec![Series {
            label: "p50".into(),
            color: RGBColor(0, 0, 255),
            dashed: true,
            markers: false,
            points: vec![(1000.0, 0.5), (5000.0, 2.0), (9000.0, 80.0)],
        }];
        chart(&p, "test", &s).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        std::fs::remove_dir_all(&dir).ok();
    }
}
